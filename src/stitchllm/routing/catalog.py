"""RouteCatalog: the family, its stitches and every route, looked up by name (what the CLI and server serve)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from stitchllm.errors import StitchError
from stitchllm.family.family import Family, load_family
from stitchllm.models.config import ModelConfig
from stitchllm.models.linear import pack_linears
from stitchllm.routing.executor import RouteExecutor
from stitchllm.routing.route import Route, large_route, small_route, stitched_route
from stitchllm.stitch.layer import StitchLayer


@dataclass
class RouteCatalog:
    """All routes of a family that can run: large, small, and one per trained stitch, ordered by cost."""

    family: Family
    stitches: dict[str, StitchLayer]
    routes: list[Route]

    @property
    def configs(self) -> dict[str, ModelConfig]:
        return {"large": self.family.large.config, "small": self.family.small.config}

    @cached_property
    def executor(self) -> RouteExecutor:
        return RouteExecutor(self.family, self.stitches)

    def set_matmul_dtype(self, dtype: torch.dtype, weights: str = "fp32") -> None:
        """Run every linear of both models and the stitches in `dtype` from now on (fp32 or bf16; see
        models/linear.py), the LM heads always in fp32 (DecoderModel.prepack); with `weights` 'int8' / 'int4' /
        'auto', the models' block weights are stored quantised (models/quantized.py; stitches stay dense).
        Process-wide for this catalog: whatever shares it computes in the same precision."""
        for model in (self.family.large, self.family.small):
            model.prepack(dtype, weights)
        for stitch in self.stitches.values():
            pack_linears(stitch, dtype)

    def relative_cost(self, route: Route) -> float:
        return route.flops_per_token(self.configs) / self.route("large").flops_per_token(self.configs)

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name:
                return r
        raise StitchError(f"unknown route {name!r}; available: {', '.join(r.name for r in self.routes)}")

    def select(self, names: str) -> list[Route]:
        """'all' or a comma-separated list of names -> routes, ordered by cost."""
        if names.strip() == "all":
            return list(self.routes)
        wanted = [self.route(n.strip()) for n in names.split(",") if n.strip()]
        if not wanted:
            raise StitchError("no route named")
        return sorted(set(wanted), key=self.relative_cost)


def build_catalog(family: Family, stitches: dict[str, StitchLayer]) -> RouteCatalog:
    configs = {"large": family.large.config, "small": family.small.config}
    routes = [large_route(configs), small_route(configs)]
    routes += [stitched_route(configs, s.cut, s.entry) for s in stitches.values()]
    return RouteCatalog(family, stitches, sorted(routes, key=lambda r: r.flops_per_token(configs)))


def load_catalog(large: str = "default", small: str | None = None, stitches: str | Path | None = None,
                 which: str = "trained", require_stitches: bool = False, weights: str = "fp32") -> RouteCatalog:
    """Load the family (block weights stored as `weights`) and, when built, its stitches (from `stitches` or the
    family's cache directory)."""
    from stitchllm.stitch.build import serving_stitches_dir
    from stitchllm.stitch.store import MANIFEST, load_stitches

    family = load_family(large, small, weights)
    directory = Path(stitches) if stitches else serving_stitches_dir(family)
    if not ((directory / MANIFEST).is_file() or require_stitches or stitches):
        return build_catalog(family, {})
    return build_catalog(family, load_stitches(family, directory, which))
