"""Experts whose model failed to load, held down for a while before a load is tried again.

A model that could not load (a bad path, weights the engine rejects, too little memory)
almost always fails the same way on the next try, and a try can cost seconds: an engine
process started, half a model read. Without a hold, every question routed to that
expert paid one failed load before the router asked the next best anyway. So after a
failed load the expert counts as down for `pool.load_backoff_s`, doubled with each
failure in a row (at most `CAP_S`): the router plans past it at no cost (as past an
engine that is restarting, `routing.on_expert_down`), a request for it alone fails at
once with the load's error and when it will be tried again, and `/v1/experts` says
why it is down. Once the hold ends, the next request that needs it tries the load
once more (a model the operator has since fixed, or memory freed, comes back); a load
that works clears the record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.errors import ConclaveError, ModelLoadError

#: The longest hold, however many loads failed in a row: a fixed model is tried again
#: within ten minutes.
CAP_S = 600.0


@dataclass(frozen=True)
class LoadFailure:
    """An expert's last failed load and how long it is held down for it."""

    error: str
    in_a_row: int
    until: float  # on the hold's clock


class LoadBackoff:
    """Failed loads by expert; thread-safe. `base_s` 0 holds no one (a load is tried on
    every request, as without a hold)."""

    def __init__(self, base_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s = base_s
        self.clock = clock
        self._failed: dict[str, LoadFailure] = {}
        self._lock = threading.Lock()

    def failed(self, expert: str, error: ConclaveError) -> float:
        """Record a failed load; returns the seconds `expert` is now held down for."""
        if self.base_s <= 0:
            return 0.0
        with self._lock:
            before = self._failed.get(expert)
            n = before.in_a_row + 1 if before is not None else 1
            hold = min(self.base_s * 2.0 ** (n - 1), max(CAP_S, self.base_s))
            # the error's own text, without the "[expert]" prefix the message adds again
            why = error.args[0] if error.args else str(error)
            self._failed[expert] = LoadFailure(str(why), n, self.clock() + hold)
        return hold

    def loaded(self, expert: str) -> None:
        """A load of `expert` worked: no hold, and the next failure starts at `base_s`."""
        with self._lock:
            self._failed.pop(expert, None)

    def held(self, expert: str) -> ModelLoadError | None:
        """The error a request for `expert` fails with now without trying the load; None
        when a load may be tried (never failed, or its hold is over)."""
        with self._lock:
            f = self._failed.get(expert)
        if f is None:
            return None
        left = f.until - self.clock()
        if left <= 0:
            return None
        return ModelLoadError(
            f"its model failed to load ({f.error}); held down after {f.in_a_row} failed "
            f"load(s) in a row, tried again in {left:.0f} s (pool.load_backoff_s)",
            expert=expert,
        )

    def down(self) -> set[str]:
        """Experts held down now."""
        now = self.clock()
        with self._lock:
            return {e for e, f in self._failed.items() if f.until > now}

    def why(self, expert: str) -> str | None:
        """Why `expert` is held down, for status pages; None when it is not."""
        err = self.held(expert)
        return err.args[0] if err is not None else None
