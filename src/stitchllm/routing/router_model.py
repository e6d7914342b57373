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


TARGETS = ("text", "task")  # what a router predicts: log(1 + KL to large) on text, or P(answer fails its tests)


class RouterMLP(nn.Module):
    """Standardise features, one hidden layer (none: hidden=0), one output per route it covers.

    target "text": predicted log(1 + KL to the large model) over a continuation (softplus); target "task": the
    probability that the route's answer to a code problem fails its tests (sigmoid). Either way the large route
    is the reference, 0 by definition. A router may cover fewer routes than the family has (a task router covers
    the routes whose outcomes were labelled): `losses_for` gives the others an infinite loss, so no policy that
    reads the router picks them."""

    def __init__(self, num_features: int, route_names: list[str], hidden: int = 128, feature_block: int = 0,
                 target: str = "text"):
        super().__init__()
        if target not in TARGETS:
            raise StitchError(f"router target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.route_names, self.target = list(route_names), target
        self.feature_block = feature_block  # features = prompt states after this many of the large model's blocks
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        layers = [nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, len(route_names))] if hidden else \
            [nn.Linear(num_features, len(route_names))]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, F] -> predicted loss [B, R] (>= 0; the large route is 0 by definition)."""
        raw = self.net((features - self.mean) / self.std)
        out = torch.sigmoid(raw) if self.target == "task" else nn.functional.softplus(raw)
        if "large" in self.route_names:
            out = out.clone()
            out[:, self.route_names.index("large")] = 0.0
        return out

    def losses_for(self, features: torch.Tensor, route_names: list[str]) -> torch.Tensor:
        """features [B, F] -> [B, len(route_names)]: the predicted loss of each of `route_names`, inf where the
        router does not cover the route."""
        own = self(features)
        out = torch.full((features.shape[0], len(route_names)), float("inf"))
        for j, name in enumerate(route_names):
            if name in self.route_names:
                out[:, j] = own[:, self.route_names.index(name)]
        return out

    def flops(self) -> int:
        """Multiply-add FLOPs of one prediction."""
        return sum(2 * m.in_features * m.out_features for m in self.net if isinstance(m, nn.Linear))


def save_router(router: RouterMLP, out: Path, manifest: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in router.state_dict().items()}, out / "router.safetensors")
    hidden = router.net[0].out_features if len(router.net) > 1 else 0
    shape = {"routes": router.route_names, "num_features": int(router.mean.shape[0]), "hidden": hidden,
             "feature_block": router.feature_block, "target": router.target}
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
    router = RouterMLP(manifest["num_features"], manifest["routes"], manifest["hidden"], manifest["feature_block"],
                       manifest.get("target", "text"))
    router.load_state_dict(load_file(directory / "router.safetensors"))
    return router.eval().requires_grad_(False), manifest
