"""Identity-stitched block-map routes of two siblings on the held-out text, same run: what route-aware healing
changed (STITCHING.md, session 18).

    .venv/bin/python docs/bench/s18/identity_routes.py heldout.txt SESSION17_SIBLING_DIR SESSION18_SIBLING_DIR
"""
import json, sys
import torch
from stitchllm.eval.perplexity import perplexity
from stitchllm.eval.text import read_text, token_windows
from stitchllm.models.loader import load_model, load_tokenizer, resolve_model_dir

pdir = resolve_model_dir("default")
L = load_model(pdir); tok = load_tokenizer(pdir, L.config.vocab_size)
val = token_windows(read_text(sys.argv[1]), tok, window=512, max_tokens=16384)
routes = [(11, 4), (15, 5), (18, 7), (20, 8), (23, 10)]
with torch.inference_mode():
    print(json.dumps({"sibling": "large", "ppl": perplexity(lambda i, b: L(i, b), val).ppl}), flush=True)
for name, d in (("s17", sys.argv[2]), ("s18", sys.argv[3])):
    S = load_model(d)
    with torch.inference_mode():
        row = {"sibling": name, "small": perplexity(lambda i, b: S(i, b), val).ppl}
        for c, e in routes:
            f = lambda i, b: S.head(S.norm(S.run_blocks(L.run_blocks(L.embed(i), b, None, 0, c), b, None, e)))
            row[f"L{c}-S{e}"] = perplexity(f, val).ppl
    print(json.dumps(row), flush=True)
