"""Serve a family as a user would and check it with the official `openai` client: time to the first answer,
one chat answer on each whole-model route, a burst of concurrent requests, and the server's peak resident memory.

    python benchmarks/serve_check.py --family qwen2.5-coder [--concurrent 16] [--max-tokens 64] [--json]

Starts `stitchllm serve` in a child process on a free loopback port, reads the child's peak RSS (VmHWM) just
before stopping it with SIGTERM, and reports how long it took to drain and its exit status (-15: uvicorn
re-raises the SIGTERM once it has shut down gracefully).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_gib(pid: int) -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 2 ** 20  # kB


def main() -> None:
    import httpx
    from openai import OpenAI

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2.5-coder")
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("serve_args", nargs="*", help="extra `stitchllm serve` options, after --")
    args = ap.parse_args()
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "stitchllm.cli", "serve", "--family", args.family, "--port",
                               str(port), *args.serve_args], stdout=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    while True:
        if server.poll() is not None:
            sys.exit(f"server exited with {server.returncode} before answering")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    banner = server.stdout.readline().strip()
    client = OpenAI(base_url=f"{base}/v1", api_key="none", timeout=600)
    question = [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]
    report = {"family": args.family, "banner": banner, "models": [m.id for m in client.models.list().data],
              "answers": {}}
    for model in ("large", "small"):
        t0 = time.monotonic()
        reply = client.chat.completions.create(model=model, messages=question, max_tokens=args.max_tokens,
                                               temperature=0)
        if model == "large":
            report["first_answer_s_after_start"] = round(time.monotonic() - started, 1)
        report["answers"][model] = {"route": reply.model_extra["route"], "seconds": round(time.monotonic() - t0, 2),
                                    "completion_tokens": reply.usage.completion_tokens,
                                    "text": reply.choices[0].message.content}

    def one(i: int) -> int:
        r = client.completions.create(model="auto", prompt=f"def add_{i}(a, b):", max_tokens=args.max_tokens,
                                      temperature=0, extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.concurrent) as pool:
        tokens = sum(pool.map(one, range(args.concurrent)))
    wall = time.monotonic() - t0
    report["burst"] = {"requests": args.concurrent, "tokens": tokens, "seconds": round(wall, 1),
                       "tokens_per_s": round(tokens / wall, 2)}
    report["peak_rss_gib"] = round(peak_rss_gib(server.pid), 2)
    t0 = time.monotonic()
    server.send_signal(signal.SIGTERM)
    report["exit_code"], report["drain_s"] = server.wait(120), round(time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
