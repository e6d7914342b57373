"""`stitchllm bench`: policies side by side under Poisson load and at saturation, interleaved in one run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from stitchllm.bench.driver import run_closed_loop, run_open_loop
from stitchllm.bench.peers import llama_cpp_batched, llama_cpp_single_stream, transformers_generate
from stitchllm.bench.report import busy_window, paired_with_large, steady_tok_s, summarize
from stitchllm.bench.workload import make_requests, poisson_arrivals
from stitchllm.data.corpus import python_docs_text
from stitchllm.engine.build import engine_from_catalog
from stitchllm.engine.config import EngineConfig
from stitchllm.errors import StitchError
from stitchllm.models.linear import dtype_name, resolve_matmul_dtype
from stitchllm.models.quantized import resolve_weight_format
from stitchllm.routing.catalog import RouteCatalog
from stitchllm.routing.controller import SLOConfig
from stitchllm.paths import stitchllm_home
from stitchllm.routing.dataset import RouterDataset, build_dataset
from stitchllm.stitch.store import stitches_fingerprint

POLICY_ALIASES = {"large": "fixed:large", "small": "fixed:small"}
SWEEP_FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure; rates in requests/s, latencies in ms."""

    policies: tuple[str, ...] = ("large", "small", "whole-model", "random", "auto")
    rates: tuple[float, ...] = (0.5, 1.0, 2.0)
    duration: float = 30.0  # seconds of Poisson arrivals per policy and rate
    saturation_duration: float = 60.0  # seconds of the closed loop per policy: several waves of requests
    saturation_requests: int = 0  # when > 0, the closed loop also stops sending after this many (each problem once)
    repeats: int = 1  # rounds of the saturation runs, policies interleaved within each (a noisy host needs several)
    prompt_tokens: int = 64
    output_tokens: int = 32
    concurrency: int = 128  # requests in flight at saturation, and the engine's max_num_seqs
    peer_batch: int = 32  # transformers generate's static batch
    slo_ttft_ms: float = 2000.0
    slo_tpot_ms: float = 250.0
    min_cost: float = 0.0  # auto's quality floor (SLOConfig.min_cost; 0: none)
    static_cost: float = 0.7
    num_requests: int = 256
    seed: int = 0
    peers: bool = True  # also measure transformers `generate` (and llama.cpp when installed) on the same prompts
    sweep: bool = False  # rates from the saturation run instead of `rates` (see sweep_rates)
    matmul_dtype: str = "float32"  # precision of the engine's linears (and of the quality labels and peers)
    weights: str = "fp32"  # how the engine's block weights are stored (and the quality labels'; not the peers')
    workload: str = "text"  # text (fixed-length spans of real text) | humaneval (the problems, served to the end)
    prompt_format: str = "chat"  # humaneval: chat | completion (eval/humaneval.py)

    def __post_init__(self) -> None:
        if self.workload not in ("text", "humaneval"):
            raise StitchError(f"workload must be text or humaneval, got {self.workload!r}")
        if self.repeats < 1:
            raise StitchError(f"repeats must be at least 1, got {self.repeats}")
        if self.saturation_requests < 0:
            raise StitchError(f"saturation requests must be 0 (no cap) or more, got {self.saturation_requests}")
        resolve_weight_format(self.weights, resolve_matmul_dtype(self.matmul_dtype))  # one-line errors


class EngineTarget:
    """The in-process engine: a fresh engine per policy and load, so no run inherits another's state. With a
    `watch` factory (driver.py) requests end when their answer is complete instead of at a fixed length."""

    def __init__(self, catalog: RouteCatalog, stitch_dir, cfg: BenchConfig, watch=None):
        self.catalog, self.stitch_dir, self.cfg, self.watch = catalog, stitch_dir, cfg, watch

    def engine(self, policy: str):
        """A fresh engine running `policy` (`benchmarks/equal_throughput.py` may swap its controller before use)."""
        cfg = self.cfg
        config = EngineConfig(max_model_len=cfg.prompt_tokens + cfg.output_tokens + 8, max_num_seqs=cfg.concurrency,
                              max_num_batched_tokens=max(512, cfg.prompt_tokens),
                              policy=POLICY_ALIASES.get(policy, policy), static_cost=cfg.static_cost,
                              slo=SLOConfig(ttft_ms=cfg.slo_ttft_ms, tpot_ms=cfg.slo_tpot_ms, dwell_s=1.0,
                                            min_cost=cfg.min_cost),
                              matmul_dtype=cfg.matmul_dtype, weights=cfg.weights)
        return engine_from_catalog(self.catalog, self.stitch_dir, config)

    def open_loop(self, policy: str, requests, arrivals: list[float], output_tokens: int):
        return run_open_loop(self.engine(policy), requests, arrivals, output_tokens, self.watch)

    def closed_loop(self, policy: str, requests, concurrency: int, duration: float, output_tokens: int,
                    max_requests: int | None = None):
        return run_closed_loop(self.engine(policy), requests, concurrency, duration, output_tokens, self.watch,
                               max_requests)


def _peers(catalog: RouteCatalog, requests, gguf: Path | None, cfg: BenchConfig) -> list[dict]:
    """transformers in fp32 and, when the engine's matmuls are bf16, in bf16 too (like for like: the engine's
    speed-up over it is then measured at the same precision as well as against the fp32 baseline)."""
    dtypes = dict.fromkeys([torch.float32, resolve_matmul_dtype(cfg.matmul_dtype)])
    rows = [transformers_generate(catalog.family.large_dir, requests, cfg.peer_batch, cfg.output_tokens,
                                  cfg.saturation_duration, dtype) for dtype in dtypes]
    if gguf is not None:  # one stream, then as many sequences batched as the engine keeps in flight
        threads = torch.get_num_threads()
        rows += [row for row in (
            llama_cpp_single_stream(gguf, requests, cfg.output_tokens, cfg.saturation_duration, threads),
            llama_cpp_batched(gguf, requests, cfg.output_tokens, cfg.concurrency, threads)) if row]
        for row in rows:
            row.pop("outputs", None)  # the batched peer's tokens: for its test, not the report
    return rows


def quality_labels(catalog: RouteCatalog, stitch_dir, requests, prompt_tokens: int,
                   matmul_dtype: str = "float32", weights: str = "fp32") -> RouterDataset:
    """Every route's top-1 agreement and NLL on each request's true continuation (teacher-forced), cached per
    family, stitches, requests, matmul precision and weight format (those the engine serves in, so the labels score
    what it served): the quality a policy served is then looked up by the route each request took."""
    dtype = resolve_matmul_dtype(matmul_dtype)
    fmt = resolve_weight_format(weights, dtype)
    catalog.set_matmul_dtype(dtype, fmt)
    # fp32 keeps the key of the labels cached before precision was a choice; bf16 names the head's precision too
    # (bf16 until session 14), so labels scored with bf16 heads are not reused; fp32 weights add nothing to it
    precision = [str(dtype), "lm_head float32"] if dtype != torch.float32 else []
    precision += [f"weights {fmt}"] if fmt != "fp32" else []
    key = json.dumps([catalog.family.fingerprint(), stitches_fingerprint(stitch_dir) if stitch_dir else None,
                      [r.prompt + r.continuation for r in requests], prompt_tokens] + precision)
    path = stitchllm_home() / "bench" / f"labels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.is_file():
        return RouterDataset(**torch.load(path))
    data = build_dataset(catalog, [torch.tensor(r.prompt + r.continuation) for r in requests], prompt_tokens,
                         feature_block=0)  # only the labels are used here
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(asdict(data), path)
    return data


def workload(catalog: RouteCatalog, stitch_dir, text_ids: torch.Tensor, cfg: BenchConfig) -> tuple[list, RouterDataset]:
    """The bench's requests cut from `text_ids`, with every route's quality labels on them."""
    requests = make_requests(text_ids, cfg.num_requests, cfg.prompt_tokens, cfg.output_tokens)
    return requests, quality_labels(catalog, stitch_dir, requests, cfg.prompt_tokens, cfg.matmul_dtype, cfg.weights)


def heldout_workload(catalog: RouteCatalog, stitch_dir, cfg: BenchConfig) -> tuple[list, RouterDataset]:
    """`workload` on the built-in held-out text (what `stitchllm bench` runs without --text): the setup the
    benchmark scripts share."""
    ids = torch.tensor(catalog.family.tokenizer(python_docs_text("heldout"), add_special_tokens=False)["input_ids"])
    return workload(catalog, stitch_dir, ids, cfg)


def sweep_rates(saturation_rows: list[dict]) -> tuple[float, ...]:
    """--sweep: offered loads from a quarter to 1.5x the request rate `large` sustains at saturation (or the
    first policy's, without `large`), so the sweep spans light load, the large model's capacity and overload."""
    base = next((r for r in saturation_rows if r["policy"] == "large"), saturation_rows[0])["throughput_rps"]
    return tuple(round(base * f, 2) for f in SWEEP_FRACTIONS)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def run_bench(catalog: RouteCatalog, stitch_dir, text_ids: torch.Tensor, cfg: BenchConfig,
              gguf: Path | None = None, target=None) -> dict:
    """Every policy at every rate, then at saturation (first, with --sweep: the sweep's rates come from it),
    then the peers. `target` serves the requests: the in-process engine by default, or a `ServerTarget`;
    `gguf` is the large model's GGUF file when there is one (llama.cpp's input).

    The humaneval workload (`text_ids` unused) serves the problems until each answer is complete (at most
    `output_tokens`), has no teacher-forced quality (null) and scores each result's pass@1 instead; its
    prompts differ in length, so `prompt_tokens` becomes the longest and the peers (equal lengths) are skipped."""
    humaneval = None
    if cfg.workload == "humaneval":
        from stitchllm.bench.humaneval import HumanEvalWorkload

        if target is not None and not isinstance(target, EngineTarget):
            raise StitchError("the humaneval workload runs on the in-process engine (its answers are checked "
                              "token by token), not over HTTP")

        humaneval = HumanEvalWorkload(catalog.family.tokenizer, cfg.prompt_format,
                                      catalog.family.large.max_positions - cfg.output_tokens)
        cfg = replace(cfg, prompt_tokens=humaneval.longest_prompt, peers=False)
        requests, quality = humaneval.requests, None
    else:
        requests, quality = workload(catalog, stitch_dir, text_ids, cfg)
    target = target or EngineTarget(catalog, stitch_dir, cfg, humaneval.watch if humaneval else None)

    def summary(records, wall: float, window: float | None = None) -> dict:
        row = summarize(records, wall, cfg.slo_ttft_ms, cfg.slo_tpot_ms, quality, window)
        if humaneval is None:
            return row
        return row | {"pass_at_1": humaneval.pass_at_1(records), "problems": humaneval.problems_served(records)}

    def saturate() -> list[dict]:
        rows = []
        for repeat in range(cfg.repeats):  # policies interleaved within each round, so drift hits all alike
            for policy in cfg.policies:
                records, wall = target.closed_loop(policy, requests, cfg.concurrency, cfg.saturation_duration,
                                                   cfg.output_tokens, cfg.saturation_requests or None)
                row = summary(records, wall)
                window = busy_window(records, cfg.saturation_duration, cfg.saturation_requests)
                # every request sent at once (no more than `concurrency`): no busy window, the whole run's rate
                steady = steady_tok_s(records, window) if window > 0 else row["throughput_tok_s"]
                rows.append({"policy": policy, "repeat": repeat} | row | {"steady_tok_s": steady}
                            | ({"problem_pass": humaneval.per_problem(records)} if humaneval else {}))
        return rows

    saturation_rows = saturate() if cfg.sweep else []
    rates = sweep_rates(saturation_rows) if cfg.sweep else cfg.rates
    results = []
    for rate in rates:  # policies interleaved within each rate, so drift hits all alike
        arrivals = poisson_arrivals(rate, cfg.duration, cfg.seed)
        for policy in cfg.policies:
            records, wall = target.open_loop(policy, requests, arrivals, cfg.output_tokens)
            results.append({"policy": policy, "rate": rate} | summary(records, wall, cfg.duration))
    saturation_rows = saturation_rows or saturate()
    saturation = {p: _mean([r["steady_tok_s"] for r in saturation_rows if r["policy"] == p]) for p in cfg.policies}
    saturation_quality = {}
    for p in cfg.policies:
        rows = [r for r in saturation_rows if r["policy"] == p]
        saturation_quality[p] = {"ppl": _mean([r["quality_ppl"] for r in rows]),
                                 "top1": _mean([r["quality_top1"] for r in rows])}
        if humaneval:
            saturation_quality[p] |= {"pass_at_1": _mean([r["pass_at_1"] for r in rows])} | paired_with_large(
                saturation_rows, p)
    peers = _peers(catalog, requests, gguf, cfg) if cfg.peers else []
    if quality is None:
        routes = [{"name": r.name, "cost": catalog.relative_cost(r), "ppl": None, "top1": None}
                  for r in catalog.routes]
    else:
        routes = [{"name": n, "cost": c, "ppl": float(quality.nll[:, i].mean().exp()),
                   "top1": float(quality.agree[:, i].mean())}
                  for i, (n, c) in enumerate(zip(quality.route_names, quality.costs))]
    return {"results": results, "saturation": saturation, "saturation_quality": saturation_quality,
            "saturation_detail": saturation_rows, "peers": peers, "routes": routes, "config": {
                "policies": list(cfg.policies), "rates": list(rates), "sweep": cfg.sweep, "duration": cfg.duration,
                "saturation_duration": cfg.saturation_duration, "saturation_requests": cfg.saturation_requests,
                "repeats": cfg.repeats,
                "prompt_tokens": cfg.prompt_tokens, "output_tokens": cfg.output_tokens,
                "concurrency": cfg.concurrency, "peer_batch": cfg.peer_batch, "slo_ttft_ms": cfg.slo_ttft_ms,
                "slo_tpot_ms": cfg.slo_tpot_ms, "server": getattr(target, "url", None),
                "matmul_dtype": dtype_name(resolve_matmul_dtype(cfg.matmul_dtype)),
                "weights": resolve_weight_format(cfg.weights, resolve_matmul_dtype(cfg.matmul_dtype)),
                "workload": cfg.workload}
            | ({"prompt_format": cfg.prompt_format} if humaneval else {})}
