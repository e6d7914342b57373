#!/usr/bin/env bash
# lm-evaluation-harness against `stitchllm serve`, offline, on the held-out tasks of benchmarks/lm_eval_tasks.py.
#
#   benchmarks/lm_eval_run.sh [ROUTE]        ROUTE: large (default) | small | auto | any stitched route's name
#
# Environment (all optional):
#   FAMILY=qwen2.5-coder    the family to serve (`stitchllm serve --family`), or instead
#   LARGE=DIR SMALL=DIR     two HF dirs sharing a tokenizer (`--model/--small`; SMALL defaults to LARGE)
#   POLICY=auto             the server's policy; it only matters for ROUTE=auto (any other ROUTE pins the route)
#   SERVE_ARGS=             more `stitchllm serve` flags, e.g. "--kv-budget-mb 512 --matmul-dtype float32"
#   PORT=8011  LIMIT=       (LIMIT: items per task, for a quick look)   TASKS_DIR=/tmp/stitchllm_lmeval_tasks
#   OUT=/tmp/stitchllm_lmeval_out   where lm-eval writes results.json and the per-item samples
#
# Needs `pip install -e '.[lmeval]'`. Runs from the repository root; the server is stopped when this exits.
# Example, the embedded SmolLM2 served as both members:
#   LARGE=~/.cache/stitchllm/models/smollm2-135m-instruct benchmarks/lm_eval_run.sh large
set -euo pipefail
cd "$(dirname "$0")/.."

ROUTE=${1:-large}
FAMILY=${FAMILY:-qwen2.5-coder}
POLICY=${POLICY:-auto}
PORT=${PORT:-8011}
TASKS_DIR=${TASKS_DIR:-/tmp/stitchllm_lmeval_tasks}
OUT=${OUT:-/tmp/stitchllm_lmeval_out}
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 1. the tasks and their data, from the held-out split only
$PY benchmarks/lm_eval_tasks.py "$TASKS_DIR"

# 2. the server, and the HF directory lm-eval counts tokens with (the large member's; the family shares it)
if [[ -n "${LARGE:-}" ]]; then
    MEMBERS=(--model "$LARGE" --small "${SMALL:-$LARGE}")
    TOKENIZER=$($PY -c 'import sys; from stitchllm.models.loader import resolve_model_dir
print(resolve_model_dir(sys.argv[1]))' "$LARGE")
else
    MEMBERS=(--family "$FAMILY")
    TOKENIZER=$($PY -c 'import sys; from stitchllm.family.registry import family_sources
from stitchllm.models.loader import resolve_model_dir; print(resolve_model_dir(family_sources(sys.argv[1])[0]))' "$FAMILY")
fi
.venv/bin/stitchllm serve "${MEMBERS[@]}" --policy "$POLICY" --host 127.0.0.1 --port "$PORT" ${SERVE_ARGS:-} &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 "$SERVER" 2>/dev/null || { echo "the server exited before it was ready" >&2; exit 1; }
    sleep 2
done

# 3. lm-eval: one prompt per request (--batch_size 1, the server refuses batches), token ids sent as counted
.venv/bin/lm_eval --model local-completions \
    --model_args "model=$ROUTE,base_url=http://127.0.0.1:$PORT/v1/completions,tokenizer=$TOKENIZER,tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1,max_length=2048" \
    --tasks stitchllm_heldout_continuation,stitchllm_heldout_copy,stitchllm_heldout_perplexity \
    --include_path "$TASKS_DIR" --batch_size 1 ${LIMIT:+--limit "$LIMIT"} \
    --output_path "$OUT" --log_samples
