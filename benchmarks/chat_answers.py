"""What each route answers to chat prompts: the quality the text-domain tables do not show.

    .venv/bin/python benchmarks/chat_answers.py [--max-tokens 48] [--small DIR] [--json]

The stitches, the router and the derived sibling's healing all train on plain text (the built-in corpus), and
`docs/STITCHING.md` scores routes on plain text too. A server mostly sees chat. This asks every route of the
default family a fixed set of chat questions (the tokenizer's chat template, greedy, fp32) and reports per route:
how often it answers nothing (end of turn first), how often its answer is the large model's word for word, and,
teacher-forced on the large model's own answers, its perplexity on them and its top-1 agreement with them.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from stitchllm.generation import generate
from stitchllm.eval.perplexity import window_logits
from stitchllm.prompting import encode_prompt
from stitchllm.routing.catalog import load_catalog
from stitchllm.sampling import SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Give me three tips for staying healthy.",
    "What is a prime number?",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about the sea.",
    "How do I reverse a list in Python?",
    "What does a CPU do?",
    "Name the planets of the solar system.",
    "What is photosynthesis?",
    "Explain what an API is in one sentence.",
    "What is 12 times 7?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Suggest a name for a pet cat.",
    "What is machine learning?",
]


@torch.inference_mode()
def answer(catalog, route, prompt_ids: list[int], max_tokens: int, eos: int) -> list[int]:
    """Greedy answer along `route`, the end-of-turn token included when it came."""
    run = catalog.executor.last_logits(route, 1, len(prompt_ids) + max_tokens)
    return generate(run, [prompt_ids], SamplingParams(max_tokens=max_tokens), {eos})[0]


@torch.inference_mode()
def score(catalog, route, prompts: list[list[int]], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced on each prompt + target, in one packed pass, over all targets' n tokens: the route's NLL [n]
    and whether its top-1 token is the target's [n]."""
    windows = [torch.tensor(p + t) for p, t in zip(prompts, targets)]
    preds = [logits[len(p) - 1:-1] for p, logits in  # [len(t), V]: the predictions of the target's tokens
             zip(prompts, window_logits(catalog.executor.full_logits(route), windows))]
    pred, target = torch.cat(preds), torch.tensor([tok for t in targets for tok in t])
    return F.cross_entropy(pred, target, reduction="none"), pred.argmax(-1) == target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--small", default=None, help="another small model (an HF directory), e.g. a sibling "
                    "healed on chat (benchmarks/chat_healing_text.py); its stitches, when built, load with it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    catalog = load_catalog(small=args.small)
    tok = catalog.family.tokenizer
    eos = tok.eos_token_id
    large = catalog.route("large")
    prompts = [encode_prompt(tok, q, chat=True, context=catalog.family.large.max_positions) for q in QUESTIONS]
    reference = [answer(catalog, large, p, args.max_tokens, eos) for p in prompts]
    rows = []
    for route in catalog.routes:
        answers = (reference if route.name == "large"  # the large model's answers are the reference: not twice
                   else [answer(catalog, route, p, args.max_tokens, eos) for p in prompts])
        nll, agree = score(catalog, route, prompts, reference)
        rows.append({"route": route.name, "cost": catalog.relative_cost(route),
                     "empty": sum(a[:1] == [eos] for a in answers) / len(answers),
                     "same_as_large": sum(a == ref for a, ref in zip(answers, reference)) / len(answers),
                     "ppl_on_large_answers": math.exp(nll.mean()), "top1_on_large_answers": float(agree.float().mean()),
                     "example": tok.decode(answers[0], skip_special_tokens=True)})
    if args.json:
        print(json.dumps({"questions": len(QUESTIONS), "answer_tokens": sum(map(len, reference)), "rows": rows}))
        return
    print(f"{len(QUESTIONS)} chat questions, greedy, up to {args.max_tokens} tokens; the large model's answers: "
          f"{sum(map(len, reference))} tokens")
    print("| route | cost | empty answers | = large's answer | ppl on large's answers | top-1 on them | "
          f"answer to {QUESTIONS[0]!r} |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['route']} | {r['cost']:.3f} | {r['empty']:.0%} | {r['same_as_large']:.0%} | "
              f"{r['ppl_on_large_answers']:.2f} | {r['top1_on_large_answers']:.3f} | {r['example']!r} |")


if __name__ == "__main__":
    main()
