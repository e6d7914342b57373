"""HumanEval pass@1 of each route and policy: every prompt submitted at once to the continuous-batching engine,
greedy, each answer stopped once complete, then checked in worker processes (eval/execution.py)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

from stitchllm.engine.config import EngineConfig
from stitchllm.eval.execution import check_completions
from stitchllm.eval.humaneval import AnswerWatch, check_format, completion_from_text, encode_problem, load_problems
from stitchllm.errors import StitchError
from stitchllm.models.linear import resolve_matmul_dtype
from stitchllm.models.quantized import resolve_weight_format
from stitchllm.routing.catalog import RouteCatalog


@dataclass(frozen=True, slots=True)
class HumanEvalConfig:
    """How the problems are shown, generated and checked; the KV budget sets how many run at once."""

    prompt_format: str = "chat"  # chat | completion (eval/humaneval.py)
    max_new_tokens: int = 512
    limit: int | None = None  # the first N problems (None: all 164)
    timeout_s: float = 10.0  # per check program
    workers: int = 2  # check processes at once
    kv_budget_mb: float = 3072.0
    max_num_seqs: int = 32
    matmul_dtype: str = "float32"
    weights: str = "fp32"  # how the engine's block weights are stored (models/quantized.py)
    static_cost: float = 0.7  # the target cost of the non-adaptive policies (router, random, whole-model)

    def __post_init__(self) -> None:
        check_format(self.prompt_format)
        if self.max_new_tokens < 1 or self.timeout_s <= 0 or self.workers < 1:
            raise StitchError("max_new_tokens and workers must be at least 1, timeout_s positive")
        self.resolved_weights()  # one-line errors, before loading

    def resolved_weights(self) -> str:
        """The weight format `weights` names with these matmuls ('auto' resolved)."""
        return resolve_weight_format(self.weights, resolve_matmul_dtype(self.matmul_dtype))


@dataclass
class Sample:
    """One problem's generation: the tokens, the route that produced them, and the checked completion."""

    task_id: str
    output_ids: list[int] = field(default_factory=list)
    route: str | None = None
    text: str = ""
    completion: str = ""
    result: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "passed"


def generate_all(engine, task_ids: list[str], prompts: list[list[int]], max_new_tokens: int,
                 prompt_format: str) -> list[Sample]:
    """Submit every prompt at once (the bench's open loop, every arrival at 0), greedy, and step the engine until
    all finish: at EOS, at max_new_tokens, or (aborted) once its AnswerWatch says the answer is complete.
    Returns one Sample per prompt, in order."""
    from stitchllm.bench.driver import run_open_loop
    from stitchllm.bench.workload import BenchRequest

    requests = [BenchRequest(i, ids, []) for i, ids in enumerate(prompts)]
    watch = partial(AnswerWatch, engine.catalog.family.tokenizer, prompt_format)
    records, _ = run_open_loop(engine, requests, [0.0] * len(requests), max_new_tokens, watch)
    return [Sample(t, route=r.route, output_ids=r.output_ids) for t, r in zip(task_ids, records)]


def _engine_config(catalog: RouteCatalog, cfg: HumanEvalConfig, longest_prompt: int, policy: str) -> EngineConfig:
    max_len = min(longest_prompt + cfg.max_new_tokens, catalog.family.large.max_positions)
    return EngineConfig(max_model_len=max_len, max_num_seqs=cfg.max_num_seqs, kv_budget_mb=cfg.kv_budget_mb,
                        policy=policy, static_cost=cfg.static_cost, matmul_dtype=cfg.matmul_dtype,
                        weights=cfg.weights)


def evaluate(catalog: RouteCatalog, stitch_dir, problems: list[dict], prompts: list[list[int]], policy: str,
             cfg: HumanEvalConfig) -> tuple[dict, list[Sample]]:
    """One row (pass@1, n, mean output tokens, generation wall seconds, route mix) for `policy` (a policy name
    or fixed:<route>), and every problem's sample."""
    from stitchllm.engine.build import engine_from_catalog

    tokenizer = catalog.family.tokenizer
    engine = engine_from_catalog(catalog, stitch_dir, _engine_config(catalog, cfg, max(map(len, prompts)), policy))
    start = time.perf_counter()
    samples = generate_all(engine, [p["task_id"] for p in problems], prompts, cfg.max_new_tokens, cfg.prompt_format)
    wall = time.perf_counter() - start
    del engine  # its KV caches go before the next route's engine allocates its own
    for s, p in zip(samples, problems):
        s.text = tokenizer.decode(s.output_ids, skip_special_tokens=True)
        s.completion = completion_from_text(s.text, p, cfg.prompt_format)
    for s, r in zip(samples, check_completions(problems, [s.completion for s in samples], cfg.timeout_s,
                                               cfg.workers)):
        s.result = r.result
    costs = {r.name: catalog.relative_cost(r) for r in catalog.routes}
    mix = Counter(s.route for s in samples)
    row = {"name": policy.removeprefix("fixed:"),
           "cost": round(sum(costs[s.route] for s in samples) / len(samples), 4),
           "pass@1": sum(s.passed for s in samples) / len(samples), "n": len(samples),
           "mean_output_tokens": sum(len(s.output_ids) for s in samples) / len(samples), "wall_s": round(wall, 2)}
    if not policy.startswith("fixed:"):
        row["route_mix"] = {k: v / len(samples) for k, v in sorted(mix.items())}
        row["pass@1_by_route"] = {k: sum(s.passed for s in samples if s.route == k) / v
                                  for k, v in sorted(mix.items())}
    return row, samples


def check_policies(catalog: RouteCatalog, stitch_dir, policies: list[str]) -> None:
    """Refuse, before any generation, a policy that cannot run: an unknown name, or a router that is not there."""
    from stitchllm.engine.build import load_router_for
    from stitchllm.routing.policies import make_policy

    for p in policies:
        if p.startswith("fixed:"):
            catalog.route(p.removeprefix("fixed:"))
        elif p != "auto":
            make_policy(p)
        if p in ("router", "whole-model") or (p == "auto" and catalog.stitches):
            if stitch_dir is None:
                raise StitchError(f"policy {p!r} needs stitches and a trained router (`stitchllm stitch build`, "
                                  "`stitchllm router train`)")
            load_router_for(catalog, stitch_dir)


def run_humaneval(catalog: RouteCatalog, stitch_dir, routes: list[str], policies: list[str],
                  cfg: HumanEvalConfig) -> tuple[dict, list[dict]]:
    """The report ({"task", "prompt_format", "routes": [row per route, then per policy]}) and every sample as
    a JSON-able dict (the route or policy it belongs to, the completion, pass/fail)."""
    check_policies(catalog, stitch_dir, policies)
    problems = load_problems(cfg.limit)
    context = catalog.family.large.max_positions
    prompts = [encode_problem(catalog.family.tokenizer, p, cfg.prompt_format, context) for p in problems]
    rows, samples = [], []
    for policy in [f"fixed:{r}" for r in routes] + list(policies):
        row, got = evaluate(catalog, stitch_dir, problems, prompts, policy, cfg)
        rows.append(row)
        samples += [{"name": row["name"], "task_id": s.task_id, "route": s.route, "passed": s.passed,
                     "result": s.result, "output_tokens": len(s.output_ids), "completion": s.completion,
                     "text": s.text} for s in got]
    return {"task": "humaneval", "prompt_format": cfg.prompt_format, "routes": rows}, samples
