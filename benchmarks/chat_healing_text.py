"""Healing text with chat in it: the parent's own answers to instruction prompts, interleaved with docstring text.

    .venv/bin/python benchmarks/chat_healing_text.py --out chat_mix.txt [--conversations 800] [--max-tokens 96]
    .venv/bin/stitchllm family derive --text chat_mix.txt --out DIR     # a sibling healed on it
    .venv/bin/python benchmarks/chat_answers.py --small DIR             # what it answers to chat

The default sibling is healed on standard-library docstrings only and answers chat prompts with nothing or a
repeated phrase (docs/STITCHING.md). Distillation matches the parent's next-token distribution at every position,
so the parent's answers to chat prompts, wrapped in its chat template, teach the child what an assistant turn is.
The prompts are built from the *train* split's docstrings (a few instruction templates around a docstring's first
sentence); chat_answers.py's questions are not among them. Greedy answers, fp32, static batches.
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from stitchllm.data.corpus import python_docs_text
from stitchllm.generation import generate, model_last_logits
from stitchllm.models.loader import load_model, load_tokenizer
from stitchllm.sampling import SamplingParams

TEMPLATES = ["Explain this in simple words: {}", "What does this mean? {}", "Summarize: {}",
             "Give an example of the following. {}", "Is this true? {}", "Rewrite this more clearly: {}"]


def instruction_prompts(docs: list[str], n: int) -> list[str]:
    """n prompts, each an instruction template around the first sentence of a docstring paragraph."""
    firsts = [doc.split(". ")[0].replace("\n", " ").strip() for doc in docs]
    firsts = [s for s in firsts if 6 <= len(s.split()) <= 40]
    step = max(1, len(firsts) // n)
    return [TEMPLATES[i % len(TEMPLATES)].format(s) for i, s in enumerate(firsts[::step][:n])]


def chat_transcripts(model, tokenizer, prompts: list[str], max_tokens: int, batch: int) -> list[str]:
    """Each prompt and the parent's greedy answer, as the chat template renders a finished conversation."""
    eos = tokenizer.eos_token_id
    out = []
    for i in tqdm(range(0, len(prompts), batch), desc="parent answers", unit="batch"):
        chunk = [[{"role": "user", "content": p}] for p in prompts[i:i + batch]]
        ids = [list(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)
                    ["input_ids"]) for m in chunk]
        run = model_last_logits(model, len(ids), max(map(len, ids)) + max_tokens)
        answers = generate(run, ids, SamplingParams(max_tokens=max_tokens), {eos})
        for messages, answer in zip(chunk, answers):
            reply = tokenizer.decode(answer, skip_special_tokens=True).strip()
            out.append(tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}],
                                                     tokenize=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--conversations", type=int, default=800)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    model = load_model("default")
    tokenizer = load_tokenizer("default", model.config.vocab_size)
    docs = python_docs_text("train").split("\n\n")
    chats = chat_transcripts(model, tokenizer, instruction_prompts(docs, args.conversations), args.max_tokens,
                             args.batch)
    # alternate a conversation and as many characters of docstring paragraphs: both reach the validation tail
    per_chat = sum(map(len, chats)) // len(chats)
    doc_iter, parts = iter(docs), []
    for chat in chats:
        parts.append(chat)
        taken = 0
        while taken < per_chat and (doc := next(doc_iter, None)) is not None:
            parts.append(doc)
            taken += len(doc)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n\n".join(parts))
    print(f"{len(chats)} conversations and {len(parts) - len(chats)} paragraphs of docstrings, "
          f"{sum(map(len, parts))} characters -> {args.out}")


if __name__ == "__main__":
    main()
