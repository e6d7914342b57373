"""The stitch build recipe of each named family: what `stitch build --family NAME` runs by default.

Why per family: the generic recipe (least squares or identity, 60 live-teacher steps) suits a sibling derived from
the large model, whose stream the identity carries almost as it is. Two independently trained models of different
widths need more: the large model's teacher pass cached once (in bf16 where the CPU has native bf16) and read by
every step (stitch/teacher_cache.py), per-channel preconditioning of the affine map (stitch/layer.py), each
route's own updates of the small blocks it runs (stitch/adapters.py), code beside prose, and more tokens.
docs/STITCHING.md has the experiments that chose each setting.
"""

from __future__ import annotations

from stitchllm.stitch.build import StitchBuildConfig
from stitchllm.stitch.teacher_cache import TeacherCacheConfig
from stitchllm.stitch.train import StitchTrainConfig

# One teacher pass keeps the streams at every cut the candidates use.
QWEN_CODER_CACHE_CUTS = (16, 20, 22, 24)

RECIPES = {
    "qwen2.5-coder": StitchBuildConfig(
        pairs=((16, 14), (20, 17), (22, 19), (24, 21)),  # entries by relative depth; cost 0.67-0.85
        stitch_mlp=512,
        adapter_rank=16,  # each route's own rank-16 updates of the small blocks it runs (stitch/adapters.py)
        text="docs+code",  # a coder family: the stdlib's code beside its docstrings
        identity_start=False,
        store_dtype="bfloat16",  # the shipped files: 37 MB for all four routes
        train=StitchTrainConfig(steps=260, batch=2, seq_len=256, lr=1e-3, precondition=True,
                                teacher_cache=TeacherCacheConfig(cuts=QWEN_CODER_CACHE_CUTS, matmul_dtype="auto")),
    ),
}


def recipe_for(family: str | None) -> StitchBuildConfig:
    """The named family's recipe, or the generic one (a family given by --model/--small, or without a recipe)."""
    return RECIPES.get(family or "", StitchBuildConfig())
