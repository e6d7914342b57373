"""Routing policies and the registry that maps names (as given on the command line) to them."""

from stitchllm.errors import StitchError
from stitchllm.routing.policies.base import Policy, RoutingBatch
from stitchllm.routing.policies.fixed import FixedPolicy
from stitchllm.routing.policies.oracle import OraclePolicy, OracleWholeModelPolicy
from stitchllm.routing.policies.random_policy import RandomPolicy
from stitchllm.routing.policies.router import RouterPolicy
from stitchllm.routing.policies.whole_model import WholeModelPolicy

POLICIES: dict[str, type[Policy]] = {
    "router": RouterPolicy, "whole-model": WholeModelPolicy, "random": RandomPolicy, "oracle": OraclePolicy,
    "oracle-whole-model": OracleWholeModelPolicy,
}


def make_policy(name: str) -> Policy:
    """'router', 'whole-model', 'random', 'oracle', 'oracle-whole-model' or 'fixed:<route>'."""
    if name.startswith("fixed:"):
        return FixedPolicy(name.split(":", 1)[1])
    if name not in POLICIES:
        raise StitchError(f"unknown policy {name!r}; available: {', '.join(POLICIES)}, fixed:<route>")
    return POLICIES[name]()


__all__ = ["POLICIES", "Policy", "RoutingBatch", "make_policy"]
