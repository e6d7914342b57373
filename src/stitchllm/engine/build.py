"""Assemble an engine from what is on disk: the family, its stitches, and (when the policy needs it) its router."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from stitchllm.engine.config import EngineConfig
from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.models.linear import resolve_matmul_dtype
from stitchllm.models.quantized import resolve_weight_format
from stitchllm.paths import stitchllm_home
from stitchllm.routing.catalog import RouteCatalog, load_catalog
from stitchllm.routing.router_model import ROUTER_MANIFEST, SHIPPED_ROUTER
from stitchllm.stitch.store import stitches_fingerprint

log = logging.getLogger(__name__)


def own_router_dir(stitch_dir: Path) -> Path:
    """Where `router train` writes the router for these stitches."""
    return stitchllm_home() / "routers" / stitches_fingerprint(stitch_dir)


def router_dir_for(stitch_dir: Path) -> Path:
    """The router for these stitches: the user's own, else the one shipped beside them (`router/` of a shipped
    stitch directory, stitch/build.py SHIPPED), else where the user's own would be."""
    own, shipped = own_router_dir(stitch_dir), stitch_dir / SHIPPED_ROUTER
    return shipped if not (own / ROUTER_MANIFEST).is_file() and (shipped / ROUTER_MANIFEST).is_file() else own


def load_router_for(catalog: RouteCatalog, stitch_dir: Path):
    """(router, manifest) trained for this family and these stitches; refuses any other."""
    from stitchllm.routing.router_model import load_router

    return load_router(router_dir_for(stitch_dir), catalog.family.fingerprint(), stitches_fingerprint(stitch_dir))


def engine_from_catalog(catalog: RouteCatalog, stitch_dir: Path | None, config: EngineConfig) -> LLMEngine:
    """The engine for `config`; `auto` on a family without stitches (nothing to route between but the two whole
    models, and no router trained for it), or with stitches but no router yet (the shipped stitches of the
    default family, before `router train`), serves every unpinned request on `large` and says so."""
    if config.policy == "auto" and not catalog.stitches:
        log.warning("no stitched route for this family (none built, or none kept by `stitchllm stitch build`): "
                    "policy auto serves every request on `large`; name `small` as the model to use the small one")
        config = replace(config, policy="fixed:large")
    no_router = stitch_dir is not None and not (router_dir_for(stitch_dir) / ROUTER_MANIFEST).is_file()
    if config.policy == "auto" and no_router:
        log.warning("no router trained for these stitches: policy auto serves every request on `large` (run "
                    "`stitchllm router train`); name a route as the model to use it")
        config = replace(config, policy="fixed:large")
    router, thresholds = None, None
    if config.policy in ("auto", "router", "whole-model") and stitch_dir is not None:
        router, manifest = load_router_for(catalog, stitch_dir)
        thresholds = manifest["thresholds"]
    return LLMEngine(catalog, config, router, thresholds)


def build_engine(config: EngineConfig, model: str, small: str | None = None,
                 stitches: str | None = None) -> LLMEngine:
    from stitchllm.stitch.build import serving_stitches_dir

    # quantised weights are made as the checkpoint streams in (models/loader.py): the fp32 model is never whole
    fmt = resolve_weight_format(config.weights, resolve_matmul_dtype(config.matmul_dtype))
    catalog = load_catalog(model, small, stitches, weights=fmt)
    stitch_dir = Path(stitches) if stitches else serving_stitches_dir(catalog.family)
    return engine_from_catalog(catalog, stitch_dir if catalog.stitches else None, config)
