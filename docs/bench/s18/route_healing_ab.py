"""A/B of route-aware healing (FAMILY.md, session 18): continue healing the cached default sibling N steps, plain vs
route-aware; score small and identity-stitched routes on 4,096 validation tokens.

    .venv/bin/python docs/bench/s18/route_healing_ab.py 16 1e-4 1.0    # steps, lr, route weight
"""
import json, sys, time
import torch
from stitchllm.data.corpus import python_docs_text
from stitchllm.eval.perplexity import perplexity
from stitchllm.eval.text import token_windows
from stitchllm.family.derive import default_sibling_dir
from stitchllm.family.distill import DistillConfig, distill
from stitchllm.models.loader import load_model, load_tokenizer, resolve_model_dir
from stitchllm.models.linear import resolve_matmul_dtype

steps, lr, weight = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
torch.manual_seed(0)
pdir = resolve_model_dir("default")
L = load_model(pdir); S0 = load_model(default_sibling_dir())
tok = load_tokenizer(pdir, L.config.vocab_size)
kept = json.load(open(default_sibling_dir() / "stitchllm-derive.json"))["kept"]["blocks"]
train_ids = torch.tensor(tok(python_docs_text("train"), add_special_tokens=False)["input_ids"])[16384:]
val = token_windows(python_docs_text("validation"), tok, window=512, max_tokens=4096)
routes = [(kept[j], j) for j in range(1, len(kept)) if kept[j] >= 10]
evals = [(11, 4), (15, 5), (18, 7), (20, 8), (23, 10), (27, 12), (29, 14)]

def route_fn(S, cut, entry):
    def f(ids, batch):
        h = L.run_blocks(L.embed(ids), batch, None, 0, cut)
        return S.head(S.norm(S.run_blocks(h, batch, None, entry)))
    return f

def score(S, tag):
    row = {"tag": tag, "small": perplexity(lambda i, b: S(i, b), val).ppl}
    for c, e in evals:
        row[f"L{c}-S{e}"] = perplexity(route_fn(S, c, e), val).ppl
    print(json.dumps(row), flush=True)
    return row

with torch.inference_mode():
    row = {"tag": "large", "large": perplexity(lambda i, b: L(i, b), val).ppl}; print(json.dumps(row), flush=True)
    score(S0, "start")
L.prepack(resolve_matmul_dtype("auto"))
for tag, w in (("plain", 0.0), ("route", weight)):
    S = load_model(default_sibling_dir())
    cfg = DistillConfig(steps=steps, lr=lr, warmup=1, matmul_dtype="auto", route_weight=w)
    t = time.perf_counter()
    rep = distill(L, S, train_ids, cfg, routes=routes)
    print(json.dumps({"tag": tag, "seconds": round(time.perf_counter() - t, 1), **{k: v for k, v in rep.items() if "kl" in k}}), flush=True)
    with torch.inference_mode():
        score(S.prepack(), tag)
