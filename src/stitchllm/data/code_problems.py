"""Code problems with tests that are not HumanEval: public functions whose docstrings carry doctest examples, in
the standard library's sources and in more-itertools', turned into HumanEval-format problems.

A problem shows the function's module imports, its signature and its docstring (examples included), as a
HumanEval prompt does; the model writes the function; the check runs the docstring's examples against what it
wrote (`doctest`, in the namespace of the check program: those imports and the model's function). A function
becomes a problem only if its own body passes that check standalone (run once, in eval/execution.py's worker
processes): one that needs its module's private helpers or globals, or whose examples depend on the machine, is
left out. Problems never import the module they come from, so a model cannot pass by calling the original.

Problems go to the corpus's splits by the same hash (data/corpus.py), of their task id: the router trains on
`train` and `validation`, `heldout` is never used.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from stitchllm.data.corpus import SKIP_DIRS, split_of

# Modules whose examples are random, print addresses, or need a terminal or the network.
SKIP_MODULES = {"random", "secrets", "uuid", "socket", "subprocess", "pdb", "doctest", "pickletools", "getpass"}
MAX_PROMPT_CHARS = 2000  # HumanEval's longest prompt is ~1,400 characters; longer ones cost a label its seconds
BODY_LINES = (1, 40)  # a body of a few lines to a screenful, as in HumanEval

CHECK_TEMPLATE = '''

def check(candidate):
    import doctest
    examples = doctest.DocTestParser().get_examples({doc!r})
    globs = dict(globals())
    globs[{name!r}] = candidate
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(doctest.DocTest(examples, globs, {name!r}, None, 0, None), out=lambda text: None)
    assert runner.tries and not runner.failures, f"{{runner.failures}} of {{runner.tries}} examples failed"
'''


def source_roots() -> list[tuple[str, Path]]:
    """(label, directory) of every source tree problems come from: the stdlib, and more-itertools if installed."""
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    spec = importlib.util.find_spec("more_itertools")
    if spec is not None and spec.origin:
        roots.append(("more_itertools", Path(spec.origin).parent))
    return roots


def _source_files() -> Iterator[tuple[str, str]]:
    """(relative path with its root's label, source text), in sorted order."""
    for label, root in source_roots():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).parts
            if SKIP_DIRS.intersection(parts) or path.stem in SKIP_MODULES or path.stem.startswith("_"):
                continue
            yield f"{label}/{path.relative_to(root).as_posix()}", path.read_text(encoding="utf-8", errors="replace")


def _problem(rel: str, lines: list[str], imports: str, fn: ast.FunctionDef) -> dict | None:
    """The problem for one top-level function, or None when it is not one (no examples, too long, ...)."""
    doc = ast.get_docstring(fn, clean=False)
    if fn.name.startswith("_") or fn.decorator_list or not doc or not doctest.DocTestParser().get_examples(doc):
        return None
    head_end, body_start = fn.body[0].end_lineno, fn.body[1].lineno if len(fn.body) > 1 else None
    if body_start is None or not BODY_LINES[0] <= fn.end_lineno - head_end <= BODY_LINES[1]:
        return None
    prompt = imports + "\n\n" + "\n".join(lines[fn.lineno - 1 : head_end]) + "\n"
    if len(prompt) > MAX_PROMPT_CHARS or fn.col_offset:
        return None
    task_id = f"{rel}:{fn.name}"
    return {"task_id": task_id, "split": split_of(task_id), "prompt": prompt, "entry_point": fn.name,
            "canonical_solution": "\n".join(lines[head_end : fn.end_lineno]) + "\n",
            "test": CHECK_TEMPLATE.format(doc=doc, name=fn.name)}


def _absolute_import(rel: str, node: ast.Import | ast.ImportFrom) -> str:
    """The import statement as the check program can run it: a package's relative import made absolute
    (`from .recipes import take` in more_itertools/more.py -> `from more_itertools.recipes import take`)."""
    if isinstance(node, ast.ImportFrom) and node.level:
        package = rel.split("/")[1:-1] if rel.startswith("stdlib/") else rel.split("/")[:-1]
        base = package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
        node = ast.ImportFrom(".".join(base), node.names, 0)
    return ast.unparse(node)


def candidate_problems() -> list[dict]:
    """Every function that could be a problem, before the standalone check (HumanEval's keys plus `split`)."""
    problems = []
    for rel, source in _source_files():
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        lines = source.split("\n")
        imports = "\n".join(_absolute_import(rel, n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and (p := _problem(rel, lines, imports, fn)) is not None:
                problems.append(p)
    return problems


def code_problems(splits: tuple[str, ...] = ("train", "validation"), workers: int = 2) -> list[dict]:
    """The problems of `splits` whose own function passes its check standalone, in sorted order."""
    from stitchllm.eval.execution import check_completions

    problems = [p for p in candidate_problems() if p["split"] in splits]
    results = check_completions(problems, [p["canonical_solution"] for p in problems], timeout=5.0, workers=workers)
    return [p for p, r in zip(problems, results) if r.passed]
