"""What the pool has granted its loaded models, and whether one more fits beside them.

A grant is a model's memory (`resources.memory_gb`, counted against
`pool.memory_budget_gb`) and its actor's cluster resources (CPUs, GPUs). The pool grants
them when it decides to load a model, before the load starts, so that loads running side
by side cannot overcommit, and releases them when it unloads the model. Grants are kept
apart from `backend.loaded` so that an engine restarting after a crash keeps its share
while it is briefly unloaded.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from workers.backend import ExpertBackend


def needs(backend: ExpertBackend) -> dict[str, float]:
    """What a loaded model holds: memory (for the budget) and its actor's resources."""
    return {"memory_gb": backend.memory_gb, **backend.actor_resources()}


class Holdings:
    """The grants by expert name; safe to use from the pool's group threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, float]] = {}

    def grant(self, backend: ExpertBackend) -> None:
        with self._lock:
            self._held[backend.name] = needs(backend)

    def release(self, name: str) -> None:
        with self._lock:
            self._held.pop(name, None)

    def holders(self, excluding: str) -> list[str]:
        """The experts holding a grant now, but `excluding`, in the order they got it."""
        with self._lock:
            return [n for n in self._held if n != excluding]

    def total(self, excluding: str) -> dict[str, float]:
        """What all grants but `excluding`'s add up to."""
        total: dict[str, float] = defaultdict(float)
        with self._lock:
            for n, held in self._held.items():
                if n != excluding:
                    for k, v in held.items():
                        total[k] += v
        return total

    def shortfall(self, backend: ExpertBackend, limits: dict[str, float]) -> str | None:
        """What `backend` lacks to load next to the models held now within `limits`, or
        None when it fits."""
        wanted = {k: v for k, v in needs(backend).items() if v > 0}
        held = self.total(excluding=backend.name)
        for k, need in wanted.items():
            if held[k] + need > limits.get(k, float("inf")) + 1e-9:
                return f"{k} (holds {held[k]:g} + needs {need:g} > {limits[k]:g})"
        return None
