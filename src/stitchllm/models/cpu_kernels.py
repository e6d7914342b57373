"""The project's C++ CPU kernels (models/kernels/*.cpp): each compiled once for this machine, or unavailable.

A kernel is compiled on first use with the system's C++ compiler through torch's extension builder (ninja), for
the CPU it runs on (-march=native), into $STITCHLLM_HOME/kernels/<cpu>/<name>/ ($STITCHLLM_KERNELS/<cpu>/<name>/
where that is set), and loaded as torch.ops. Where it cannot be built (no compiler, no ninja, a build error) the
caller falls back to PyTorch, with one line on stderr saying why.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

import torch

from stitchllm.paths import kernels_home

KERNELS = Path(__file__).with_name("kernels")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]


def cpu_tag() -> str:
    """Names the build after this CPU's model and instruction sets: -march=native code may not run elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    wanted = [line for line in info if line.startswith(("model name", "flags"))][:2]
    digest = hashlib.sha256("\n".join([platform.machine(), torch.__version__, *wanted]).encode()).hexdigest()
    return f"{platform.machine()}-{digest[:12]}"


def build_kernel(name: str, sources: list[str], purpose: str, fallback: str) -> bool:
    """Compile (once) and load kernels/`sources` as the torch.ops library they register; False, with one line on
    stderr ("`purpose` kernel unavailable (why); `fallback`"), where it cannot be built."""
    from torch.utils import cpp_extension

    build_dir = kernels_home() / cpu_tag() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        if not any(build_dir.glob("*.so")):
            print(f"stitchllm: building the {purpose} kernel for this CPU (once, ~10-60 s)", file=sys.stderr)
        cpp_extension.load(name, [str(KERNELS / source) for source in sources], extra_cflags=FLAGS,
                           extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False)
    except Exception as exc:  # the model still runs, only slower
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"stitchllm: {purpose} kernel unavailable ({reason}); {fallback}", file=sys.stderr)
        return False
    return True
