"""Assemble an engine from what is on disk: the family, its stitches, and (when the policy needs it) its router."""

from __future__ import annotations

from pathlib import Path

from stitchllm.engine.config import EngineConfig
from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.paths import stitchllm_home
from stitchllm.routing.catalog import RouteCatalog, load_catalog
from stitchllm.stitch.store import stitches_fingerprint


def router_dir_for(stitch_dir: Path) -> Path:
    return stitchllm_home() / "routers" / stitches_fingerprint(stitch_dir)


def load_router_for(catalog: RouteCatalog, stitch_dir: Path):
    """(router, manifest) trained for this family and these stitches; refuses any other."""
    from stitchllm.routing.router_model import load_router

    return load_router(router_dir_for(stitch_dir), catalog.family.fingerprint(), stitches_fingerprint(stitch_dir))


def engine_from_catalog(catalog: RouteCatalog, stitch_dir: Path | None, config: EngineConfig) -> LLMEngine:
    router, thresholds = None, None
    if config.policy in ("auto", "router", "whole-model") and stitch_dir is not None:
        router, manifest = load_router_for(catalog, stitch_dir)
        thresholds = manifest["thresholds"]
    return LLMEngine(catalog, config, router, thresholds)


def build_engine(config: EngineConfig, model: str = "default", small: str | None = None,
                 stitches: str | None = None) -> LLMEngine:
    from stitchllm.stitch.build import stitches_dir

    catalog = load_catalog(model, small, stitches)
    stitch_dir = Path(stitches) if stitches else stitches_dir(catalog.family)
    return engine_from_catalog(catalog, stitch_dir if catalog.stitches else None, config)
