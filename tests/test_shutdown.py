"""SIGTERM lets the requests in flight finish, then the server process exits."""

import os
import signal
import subprocess
import sys
import time

import httpx
import openai

from server_util import free_port
from test_bench import _router_home


def test_sigterm_finishes_in_flight_stream(tiny_catalog, tiny_parent_dir, tiny_sibling):
    _, stitch_dir, _, _ = tiny_catalog
    port = free_port()
    env = os.environ | {"STITCHLLM_HOME": str(_router_home(tiny_catalog))}
    server = subprocess.Popen(
        [sys.executable, "-m", "stitchllm.cli", "serve", "--port", str(port), "--model", str(tiny_parent_dir),
         "--small", str(tiny_sibling[0]), "--stitches", str(stitch_dir), "--max-model-len", "512"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        stream = client.completions.create(model="large", prompt="shutdown", max_tokens=200, stream=True,
                                           extra_body={"ignore_eos": True})
        chunks = iter(stream)
        next(chunks)
        server.send_signal(signal.SIGTERM)  # mid-stream
        rest = list(chunks)
        assert rest[-1].choices[0].finish_reason == "length"  # the request in flight ran to its end
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
