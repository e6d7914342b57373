"""KVCacheManager: which request holds which cache slot of which model (plain Python; the runner owns tensors)."""

from __future__ import annotations


class KVCacheManager:
    """A free list of slots per model; a slot holds one sequence of up to max_model_len tokens for that model.

    A request takes a slot only in the models its route runs: large-only routes never touch the small model's
    cache and the whole-small route never holds the large model's beyond routing.
    """

    def __init__(self, slots_per_model: dict[str, int]):
        self.capacity = dict(slots_per_model)
        self._free = {m: list(range(n - 1, -1, -1)) for m, n in slots_per_model.items()}  # pop() gives slot 0 first

    def can_allocate(self, models: set[str]) -> bool:
        return all(self._free[m] for m in models)

    def allocate(self, models: set[str]) -> dict[str, int]:
        if not self.can_allocate(models):
            raise RuntimeError("no free KV slot: check can_allocate first")
        return {m: self._free[m].pop() for m in sorted(models)}

    def free(self, slots: dict[str, int]) -> None:
        for model, slot in slots.items():
            self._free[model].append(slot)
        # lowest slots first: consecutive slots let decode attention read the cache without copying
        for free in self._free.values():
            free.sort(reverse=True)

    def used(self) -> dict[str, int]:
        return {m: self.capacity[m] - len(self._free[m]) for m in self.capacity}

    def usage(self) -> float:
        """Fraction of all slots in use (the `kv_cache_usage` metric)."""
        total = sum(self.capacity.values())
        return sum(self.used().values()) / total if total else 0.0
