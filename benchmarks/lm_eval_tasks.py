"""lm-evaluation-harness tasks over the held-out corpus, for scoring `stitchllm serve` offline.

    .venv/bin/python benchmarks/lm_eval_tasks.py DIR [--n-choice 100] [--n-copy 30] [--n-perplexity 20] [--seed 0]

lm-eval's own tasks download their data from the Hugging Face hub, which this project's machines cannot reach.
This writes, into DIR, three tasks (YAML) and the JSONL files they read (`dataset_path: json`), all made from the
held-out split of the built-in corpus (Python stdlib docstrings nothing trains, stitches or routes on), seeded:

- `stitchllm_heldout_continuation` (multiple_choice: acc, acc_norm): the first half of a held-out sentence, and
  four candidate second halves, the true one and three taken from other sentences. Log-likelihood only, so it
  exercises completions' echo + logprobs.
- `stitchllm_heldout_copy` (generate_until: exact_match, chrf): repeat a held-out sentence after three worked
  examples, greedy, up to the end of the line. Copying is easy enough for a 135M model to score above zero, and a
  stitched route that loses in-context copying shows it.
- `stitchllm_heldout_perplexity` (loglikelihood_rolling: word_perplexity, byte_perplexity, bits_per_byte) over
  held-out prose paragraphs.

Run against a server (benchmarks/lm_eval_run.sh does all of this; `pip install -e '.[lmeval]'` first):

    .venv/bin/python benchmarks/lm_eval_tasks.py /tmp/lmeval_tasks
    .venv/bin/stitchllm serve --family qwen2.5-coder --port 8011 &
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/lm_eval --model local-completions \
        --model_args model=large,base_url=http://127.0.0.1:8011/v1/completions,tokenizer=TOKENIZER_DIR,\
tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1,max_length=2048 \
        --tasks stitchllm_heldout_continuation,stitchllm_heldout_copy,stitchllm_heldout_perplexity \
        --include_path /tmp/lmeval_tasks --batch_size 1

`model=` names the route every request takes (`large`, `small`, any stitched route, or `auto` for the server's
policy); TOKENIZER_DIR is the family's HF directory (lm-eval counts context tokens with it). `--batch_size` must be
1: the server takes one prompt per request. `tokenized_requests=True` sends token ids, so the tokens lm-eval scores
are exactly the ones it counted; with False it sends text that the server re-tokenizes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from stitchllm.data.corpus import python_docs_text

PREFIX = "stitchllm_heldout"
SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
COPY_SHOTS = 3


def prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of running prose, each joined onto one line: no indented tables, doctests, lists or field
    lines, plain ASCII (the tokenizer round trip and the metrics then need no care)."""
    out = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if any(not ln.strip() or ln[0].isspace() or ln.lstrip().startswith((">>>", "-", "*", ":", "..")) or
               "--" in ln or ln.rstrip().endswith(":") for ln in lines):
            continue
        para = " ".join(ln.strip() for ln in lines)
        if para.isascii() and para.isprintable() and para[-1] in ".!?":
            out.append(re.sub(r"\s+", " ", para))
    return list(dict.fromkeys(out))  # docstrings repeat across classes; keep the first of each


def sentences(paragraphs: list[str], min_words: int, max_words: int) -> list[str]:
    found = (s for p in paragraphs for s in SENTENCE_END.split(p))
    return list(dict.fromkeys(s for s in found if min_words <= len(s.split()) <= max_words and s.endswith(".")))


def continuation_items(pool: list[str], n: int, rng: random.Random) -> list[dict]:
    """Each sentence cut at its middle word: the first half, and its true second half among three others'."""
    halves = []
    for s in pool[:n]:
        words = s.split()
        cut = len(words) // 2
        halves.append((" ".join(words[:cut]), " ".join(words[cut:])))
    items = []
    for i, (context, truth) in enumerate(halves):
        others = rng.sample([h[1] for j, h in enumerate(halves) if j != i and h[1] != truth], 3)
        choices = [truth, *others]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(truth)})
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_yaml(path: Path, config: dict) -> None:
    """JSON is YAML: each value written as JSON keeps Jinja's braces and newlines exact without a YAML writer."""
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()), encoding="utf-8")


def data_source(path: Path, splits: dict[str, str]) -> dict:
    return {"dataset_path": "json",
            "dataset_kwargs": {"data_files": {split: str(path.parent / name) for split, name in splits.items()}}}


def write_tasks(out: Path, n_choice: int = 100, n_copy: int = 30, n_perplexity: int = 20, seed: int = 0) -> list[str]:
    """Write the three tasks and their data into `out`; returns the task names."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paragraphs = prose_paragraphs(python_docs_text("heldout"))
    pool = sentences(paragraphs, 10, 28)
    rng.shuffle(pool)
    short = [s for s in pool[n_choice:] if len(s.split()) <= 16]  # disjoint from the continuation items
    long_paras = [p for p in paragraphs if 40 <= len(p.split()) <= 250]
    rng.shuffle(long_paras)
    need = {"sentences (10-28 words)": (len(pool), n_choice), "short sentences": (len(short), n_copy + COPY_SHOTS),
            "paragraphs (40-250 words)": (len(long_paras), n_perplexity)}
    for what, (have, want) in need.items():
        if have < want:
            raise SystemExit(f"the held-out split has {have} {what}; asked for {want}")

    write_jsonl(out / "continuation.jsonl", continuation_items(pool, n_choice, rng))
    write_jsonl(out / "copy_shots.jsonl", [{"sentence": s} for s in short[:COPY_SHOTS]])
    write_jsonl(out / "copy.jsonl", [{"sentence": s} for s in short[COPY_SHOTS:COPY_SHOTS + n_copy]])
    write_jsonl(out / "perplexity.jsonl", [{"text": p} for p in long_paras[:n_perplexity]])

    version = {"metadata": {"version": 1.0, "seed": seed}}
    write_yaml(out / f"{PREFIX}_continuation.yaml", {
        "task": f"{PREFIX}_continuation", **data_source(out / "continuation.jsonl", {"test": "continuation.jsonl"}),
        "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "label", "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}], **version})
    write_yaml(out / f"{PREFIX}_copy.yaml", {
        "task": f"{PREFIX}_copy",
        **data_source(out / "copy.jsonl", {"train": "copy_shots.jsonl", "test": "copy.jsonl"}),
        "training_split": "train", "test_split": "test", "fewshot_split": "train", "output_type": "generate_until",
        "description": "Repeat each sentence exactly.\n\n",
        "doc_to_text": "Sentence: {{sentence}}\nRepeat:", "doc_to_target": "sentence", "target_delimiter": " ",
        "fewshot_delimiter": "\n\n", "num_fewshot": COPY_SHOTS, "fewshot_config": {"sampler": "first_n"},
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 64, "do_sample": False, "temperature": 0.0},
        # the answer comes after "Repeat:" with a leading space; surrounding whitespace is not the model's error
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "regexes_to_ignore": [r"^\s+|\s+$"]},
                        {"metric": "chrf", "aggregation": "chrf", "higher_is_better": True}], **version})
    write_yaml(out / f"{PREFIX}_perplexity.yaml", {
        "task": f"{PREFIX}_perplexity", **data_source(out / "perplexity.jsonl", {"test": "perplexity.jsonl"}),
        "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text",
        "metric_list": [{"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                        {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                        {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}],
        **version})
    return [f"{PREFIX}_continuation", f"{PREFIX}_copy", f"{PREFIX}_perplexity"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="Directory for the task YAMLs and their JSONL data (--include_path).")
    ap.add_argument("--n-choice", type=int, default=100, help="Items of the multiple-choice continuation task.")
    ap.add_argument("--n-copy", type=int, default=30, help="Items of the copy (generation) task.")
    ap.add_argument("--n-perplexity", type=int, default=20, help="Paragraphs of the rolling perplexity task.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = write_tasks(args.out, args.n_choice, args.n_copy, args.n_perplexity, args.seed)
    print(f"wrote {', '.join(names)} to {args.out.resolve()} (lm_eval --include_path {args.out.resolve()})")


if __name__ == "__main__":
    main()
