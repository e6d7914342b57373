"""Real text that ships with every Python install: the standard library's docstrings (English prose) and its
source files themselves (Python code).

Docstrings are read from the stdlib's source files with `ast` (nothing is imported or executed), in sorted path
order. Each file goes to one split by a hash of its relative path, so the splits are disjoint by construction:
`heldout` (~10%) is for evaluation only and is never used to derive, stitch, route or test; `validation` (~10%)
is for choices made while building; `train` (the rest) feeds calibration and distillation.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

SPLITS = ("train", "validation", "heldout")
# Packages whose docstrings are tests, tool UIs or vendored code rather than documentation prose.
SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "__pycache__",
             "ensurepip", "pydoc_data", "tkinter", "unittest"}


def split_of(relative_path: str) -> str:
    bucket = int(hashlib.sha256(relative_path.encode()).hexdigest(), 16) % 10
    return "heldout" if bucket == 0 else "validation" if bucket == 1 else "train"


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    docs = (ast.get_docstring(n) for n in nodes)
    return [d.strip() for d in docs if d and len(d.split()) >= 8]  # skip one-liners like "Return x."


def _sources(split: str) -> Iterator[str]:
    """The text of every stdlib source file in `split`, in sorted path order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if not SKIP_DIRS.intersection(path.relative_to(root).parts) and split_of(rel) == split:
            yield path.read_text(encoding="utf-8", errors="replace")


@lru_cache(maxsize=None)
def python_docs_text(split: str) -> str:
    """All docstrings of the stdlib files in `split`, separated by blank lines."""
    return "\n\n".join(doc for source in _sources(split) for doc in _docstrings(source))


@lru_cache(maxsize=None)
def python_code_text(split: str) -> str:
    """The stdlib source files of `split` as they are (code, comments and docstrings), separated by blank lines."""
    return "\n\n".join(source.strip() for source in _sources(split))
