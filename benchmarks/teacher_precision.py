"""The stitch build's teacher pass in bf16 against fp32: speed, and how far its states and next-token
distributions move (what `TeacherCacheConfig(matmul_dtype="auto")` trades on CPUs with native bf16).

    python benchmarks/teacher_precision.py --family qwen2.5-coder --windows 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from stitchllm.data.corpus import python_docs_text
    from stitchllm.family.family import load_family
    from stitchllm.family.registry import family_sources
    from stitchllm.models.batch import ForwardBatch
    from stitchllm.models.cpu import cpu_features
    from stitchllm.models.linear import computing_in

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2.5-coder")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--cut", type=int, default=24)
    args = ap.parse_args()
    family = load_family(*family_sources(args.family))
    large, n = family.large, family.large.config.num_layers
    ids = torch.tensor(family.tokenizer(python_docs_text("train"), add_special_tokens=False)["input_ids"])
    windows = ids[16384:16384 + 256 * args.windows].view(args.windows, 256)

    @torch.inference_mode()
    def run() -> tuple[list, float]:
        start, out = time.perf_counter(), []
        for w in windows:
            states = large.residual_states(w, ForwardBatch([0], [0], [256]), {args.cut, n})
            out.append((states[args.cut].float(), torch.log_softmax(large.head(large.norm(states[n])).float(), -1)))
        return out, windows.numel() / (time.perf_counter() - start)

    exact, fp32_speed = run()
    with computing_in(large, torch.bfloat16):
        run()  # warm-up: oneDNN's first bf16 calls pick their kernels
        fast, bf16_speed = run()
    rel = [float((a - b).norm() / a.norm()) for (a, _), (b, _) in zip(exact, fast)]
    kl = [float((p.exp() * (p - q)).sum(-1).mean()) for (_, p), (_, q) in zip(exact, fast)]
    top1 = [float((p.argmax(-1) == q.argmax(-1)).float().mean()) for (_, p), (_, q) in zip(exact, fast)]
    report = {"cpu": cpu_features().describe(), "tokens": windows.numel(), "fp32_tok_s": round(fp32_speed, 1),
              "bf16_tok_s": round(bf16_speed, 1), "state_rel_err": max(rel), "kl_fp32_bf16": sum(kl) / len(kl),
              "top1_agree": sum(top1) / len(top1)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
