"""Route: a path of decoder blocks through a family, with its readable name and its cost."""

from __future__ import annotations

from dataclasses import dataclass

from stitchllm.models.config import ModelConfig


@dataclass(frozen=True, slots=True)
class Segment:
    """Blocks [first, end) of one model of the family ("large" or "small")."""

    model: str
    first: int
    end: int


@dataclass(frozen=True, slots=True)
class Route:
    """Ordered segments; between two segments of different models sits a stitching layer.

    The route embeds with its first segment's model and finishes with the last segment's norm and head.
    """

    segments: tuple[Segment, ...]

    @property
    def name(self) -> str:
        if len(self.segments) == 1:
            return self.segments[0].model
        return "-".join(f"{s.model[0].upper()}{s.end if i == 0 else s.first}" for i, s in enumerate(self.segments))

    @property
    def stitches(self) -> list[tuple[int, int]]:
        """(large blocks run, small entry block) of every large->small junction along the route."""
        return [(a.end, b.first) for a, b in zip(self.segments, self.segments[1:])]

    @property
    def head_model(self) -> str:
        return self.segments[-1].model

    def flops_per_token(self, configs: dict[str, ModelConfig]) -> int:
        """Matmul FLOPs per token: blocks run, stitches, and the final model's head."""
        blocks = sum((s.end - s.first) * configs[s.model].block_flops_per_token for s in self.segments)
        d_large, d_small = configs["large"].hidden_size, configs["small"].hidden_size
        stitches = len(self.stitches) * 2 * d_large * d_small
        return blocks + stitches + configs[self.head_model].head_flops_per_token

    def _block_and_stitch_params(self, configs: dict[str, ModelConfig]) -> int:
        blocks = sum((s.end - s.first) * configs[s.model].block_params for s in self.segments)
        return blocks + len(self.stitches) * (configs["large"].hidden_size + 1) * configs["small"].hidden_size

    def weight_bytes_per_step(self, configs: dict[str, ModelConfig], bytes_per_param: int = 4) -> int:
        """Weights one decode step reads: every block used, the stitches, the final norm and head."""
        return (self._block_and_stitch_params(configs) + configs[self.head_model].norm_and_head_params) * bytes_per_param

    def params(self, configs: dict[str, ModelConfig]) -> int:
        """Parameters the route touches: blocks, stitches, its input embedding, final norm and head."""
        first, head = configs[self.segments[0].model], configs[self.head_model]
        shared = self.segments[0].model == self.head_model and head.tie_word_embeddings
        tables = first.vocab_size * first.hidden_size + (0 if shared else head.vocab_size * head.hidden_size)
        return self._block_and_stitch_params(configs) + tables + head.hidden_size


def large_route(configs: dict[str, ModelConfig]) -> Route:
    return Route((Segment("large", 0, configs["large"].num_layers),))


def small_route(configs: dict[str, ModelConfig]) -> Route:
    return Route((Segment("small", 0, configs["small"].num_layers),))


def stitched_route(configs: dict[str, ModelConfig], cut: int, entry: int) -> Route:
    return Route((Segment("large", 0, cut), Segment("small", entry, configs["small"].num_layers)))


def default_cuts(num_large_layers: int, step: int = 3) -> list[int]:
    """Cut points every `step` large blocks over the upper two thirds of the large model."""
    return list(range(num_large_layers // 3, num_large_layers, step))


def matched_entry(cut: int, configs: dict[str, ModelConfig]) -> int:
    """The small model's entry block at the same relative depth: j = round(k * n_S / n_L), within [1, n_S - 1]."""
    n_large, n_small = configs["large"].num_layers, configs["small"].num_layers
    return min(max(1, round(cut * n_small / n_large)), n_small - 1)


def entry_after(cut: int, block_map: list[int]) -> int:
    """Entry into a sibling pruned from the large model: its first block that came from large block >= `cut`.

    `block_map[j]` is the large block that small block j was pruned from. Cutting just before a kept block and
    entering at it runs every large block once, itself or through its healed copy; relative depth instead skips
    (or repeats) the runs of blocks the pruning dropped.
    """
    later = [j for j, parent in enumerate(block_map) if parent >= cut]
    return min(max(1, later[0] if later else len(block_map) - 1), len(block_map) - 1)


def block_map_cuts(configs: dict[str, ModelConfig], block_map: list[int], step: int = 2) -> list[int]:
    """Cuts just before a kept block, over the upper two thirds, at least `step` apart, cheaper than the large model."""
    large_cost = large_route(configs).flops_per_token(configs)
    cuts: list[int] = []
    for j, k in enumerate(block_map):
        route = stitched_route(configs, k, j)
        if j == 0 or k < configs["large"].num_layers // 3 or route.flops_per_token(configs) >= large_cost:
            continue
        if not cuts or k - cuts[-1] >= step:
            cuts.append(k)
    return cuts


def enumerate_routes(configs: dict[str, ModelConfig], cuts: list[int] | None = None,
                     block_map: list[int] | None = None) -> list[Route]:
    """small, every candidate stitched route, and large, ordered by cost.

    Entries matched by relative depth at `cuts` (default: every 3 blocks). With a `block_map` (the small model
    was pruned from the large) also the routes that cut just before a kept block and enter at it (`entry_after`),
    at `cuts` or by default at `block_map_cuts`.
    """
    pairs = [(k, matched_entry(k, configs)) for k in (default_cuts(configs["large"].num_layers) if cuts is None
                                                       else cuts)]
    if block_map is not None:
        pairs += [(k, entry_after(k, block_map)) for k in (block_map_cuts(configs, block_map) if cuts is None
                                                           else cuts)]
    routes = [small_route(configs), large_route(configs)] + [stitched_route(configs, k, j) for k, j in set(pairs)]
    return sorted(routes, key=lambda r: (r.flops_per_token(configs), r.name))
