"""The CPU decode-attention kernel (kernels/decode_attention.cpp): built once for this machine, or None.

It is compiled on first use with the system's C++ compiler through torch's extension builder (ninja), for the
CPU it runs on (-march=native), into $STITCHLLM_HOME/kernels/<cpu>/, and loaded as
torch.ops.stitchllm.decode_attention. Where it cannot be built (no compiler) attention falls back to PyTorch's
SDPA, with one line on stderr saying why. STITCHLLM_DECODE_KERNEL=0 turns it off (to compare the two paths).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from pathlib import Path
from typing import Callable

import torch

from stitchllm.paths import stitchllm_home

SOURCE = Path(__file__).with_name("kernels") / "decode_attention.cpp"
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
MAX_GROUP = 8  # query heads per key head the kernel is compiled for; more go to SDPA


def _cpu_tag() -> str:
    """Names the build after this CPU's model and instruction sets: -march=native code may not run elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    wanted = [line for line in info if line.startswith(("model name", "flags"))][:2]
    digest = hashlib.sha256("\n".join([platform.machine(), torch.__version__, *wanted]).encode()).hexdigest()
    return f"{platform.machine()}-{digest[:12]}"


@functools.cache
def decode_attention_kernel() -> Callable[..., torch.Tensor] | None:
    """torch.ops.stitchllm.decode_attention(q, k_cache, v_cache, slots, lengths, scale), or None if unavailable."""
    if os.environ.get("STITCHLLM_DECODE_KERNEL", "1") == "0":
        return None
    from torch.utils import cpp_extension

    build_dir = stitchllm_home() / "kernels" / _cpu_tag()
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        if not any(build_dir.glob("*.so")):
            print("stitchllm: building the decode-attention kernel for this CPU (once, ~10 s)", file=sys.stderr)
        cpp_extension.load("stitchllm_decode_attention", [str(SOURCE)], extra_cflags=FLAGS,
                           extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False)
    except Exception as exc:  # no compiler, no ninja, a build error: attention still works, only slower
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"stitchllm: decode-attention kernel unavailable ({reason}); using PyTorch SDPA", file=sys.stderr)
        return None
    return torch.ops.stitchllm.decode_attention
