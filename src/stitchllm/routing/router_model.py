"""RouterMLP: predicts, from pooled prompt features, how much quality each route would lose on this request."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stitchllm.errors import StitchError

ROUTER_MANIFEST = "router.json"
SHIPPED_ROUTER = "router"  # the subdirectory of a shipped stitch directory that holds its router


class RouterMLP(nn.Module):
    """Standardise features, one hidden layer, one output per route: predicted log(1 + KL to the large model)."""

    def __init__(self, num_features: int, route_names: list[str], hidden: int = 128, feature_block: int = 0):
        super().__init__()
        self.route_names = list(route_names)
        self.feature_block = feature_block  # features = prompt states after this many of the large model's blocks
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, len(route_names)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, F] -> predicted loss [B, R] (>= 0; the large route is 0 by definition)."""
        out = nn.functional.softplus(self.net((features - self.mean) / self.std))
        if "large" in self.route_names:
            out = out.clone()
            out[:, self.route_names.index("large")] = 0.0
        return out

    def flops(self) -> int:
        """Multiply-add FLOPs of one prediction."""
        return sum(2 * m.in_features * m.out_features for m in self.net if isinstance(m, nn.Linear))


def save_router(router: RouterMLP, out: Path, manifest: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in router.state_dict().items()}, out / "router.safetensors")
    shape = {"routes": router.route_names, "num_features": int(router.mean.shape[0]),
             "hidden": router.net[0].out_features, "feature_block": router.feature_block}
    (out / ROUTER_MANIFEST).write_text(json.dumps(manifest | shape, indent=2))


def load_router(directory: Path, family_fingerprint: dict, stitches_fingerprint: str) -> tuple[RouterMLP, dict]:
    """Load a router; refuses one trained for another family or other stitches."""
    path = directory / ROUTER_MANIFEST
    if not path.is_file():
        raise StitchError(f"no router at {directory}; run `stitchllm router train`")
    manifest = json.loads(path.read_text())
    if manifest["family"] != family_fingerprint or manifest["stitches"] != stitches_fingerprint:
        raise StitchError(f"router at {directory} was trained for another family or other stitches")
    if "feature_block" not in manifest:
        raise StitchError(f"router at {directory} predates feature blocks; run `stitchllm router train`")
    router = RouterMLP(manifest["num_features"], manifest["routes"], manifest["hidden"], manifest["feature_block"])
    router.load_state_dict(load_file(directory / "router.safetensors"))
    return router.eval().requires_grad_(False), manifest
