"""The bench's HumanEval workload: the 164 problems as requests (shown as `eval --task humaneval` shows them),
a watch that ends each answer once it is complete, and the pass@1 of the answers a policy served."""

from __future__ import annotations

from functools import partial

from stitchllm.bench.driver import Record
from stitchllm.bench.workload import BenchRequest
from stitchllm.eval.execution import check_completions
from stitchllm.eval.humaneval import AnswerWatch, completion_from_text, encode_problem, load_problems


class HumanEvalWorkload:
    """Requests (request i is problem i, no true continuation: quality is pass@1, not agreement) and their
    checker; each distinct (problem, completion) is run once per bench, as greedy answers repeat across
    policies, rates and waves."""

    def __init__(self, tokenizer, prompt_format: str, context: int, timeout_s: float = 10.0, workers: int = 2):
        self.tokenizer, self.prompt_format = tokenizer, prompt_format
        self.timeout_s, self.workers = timeout_s, workers
        self.problems = load_problems()
        self.requests = [BenchRequest(i, encode_problem(tokenizer, p, prompt_format, context), [])
                         for i, p in enumerate(self.problems)]
        self.watch = partial(AnswerWatch, tokenizer, prompt_format)  # the driver makes one per request
        self._passed: dict[tuple[int, str], bool] = {}

    @property
    def longest_prompt(self) -> int:
        return max(len(r.prompt) for r in self.requests)

    def pass_at_1(self, records: list[Record]) -> float | None:
        """pass@1 of the served requests (every one that produced output): per problem, the fraction of its
        served completions that pass its tests, averaged over the problems served, so each problem weighs the same
        however often it was served (a closed loop wraps round and serves the first problems again). None when
        none was served."""
        per_problem = self.per_problem(records)
        return sum(per_problem.values()) / len(per_problem) if per_problem else None

    def per_problem(self, records: list[Record]) -> dict[int, float]:
        """{problem index: fraction of its served completions that pass}, for the problems served."""
        done = [r for r in records if r.output_ids and r.error is None]
        keys = []
        for r in done:
            text = self.tokenizer.decode(r.output_ids, skip_special_tokens=True)
            i = r.request.index
            keys.append((i, completion_from_text(text, self.problems[i], self.prompt_format)))
        new = list(dict.fromkeys(k for k in keys if k not in self._passed))
        results = check_completions([self.problems[i] for i, _ in new], [c for _, c in new], self.timeout_s,
                                    self.workers)
        self._passed.update((k, res.passed) for k, res in zip(new, results))
        per_problem: dict[int, list[bool]] = {}
        for k in keys:
            per_problem.setdefault(k[0], []).append(self._passed[k])
        return {i: sum(p) / len(p) for i, p in sorted(per_problem.items())}

    @staticmethod
    def problems_served(records: list[Record]) -> int:
        """How many distinct problems got an answer."""
        return len({r.request.index for r in records if r.output_ids and r.error is None})
