"""Experts held down after failing, for a while, before anyone tries them again.

Two failures repeat themselves. A model that could not load (a bad path, weights the
engine rejects, too little memory) almost always fails the same way on the next try,
and a try can cost seconds: an engine process started, half a model read (a missing
path took 6.9 s on the vLLM CPU build). An endpoint that stopped answering (connection
refused, 5xx, timeouts) fails every request after its retries: with the defaults a
hanging one costs three 60-second timeouts per question. Without a hold, every question
routed to such an expert paid that before the router asked the next best anyway.

So the pool holds an expert down after a failed load, or after `pool.down_after`
requests in a row failed as unreachable (`ConclaveError.unreachable`), for
`pool.down_hold_s`, doubled with each hold in a row (at most `CAP_S`). While it is
held, the router plans past it at no cost (`ExpertPool.unavailable`, as past an engine
that is restarting), a request for it alone fails at once saying why and when it is
tried again, and `/v1/experts` says why it is down. When the hold is over the next
request tries it once more: a load that works, or an answer, clears the record; one
more failure holds it again, twice as long (a circuit breaker's half-open state).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from orchestrator.errors import (
    ConclaveError,
    ModelLoadError,
    RemoteUnavailableError,
    error_class,
)
from workers.batch import GenerationResult

#: The longest hold, however many in a row: a fixed expert is tried again within ten
#: minutes.
CAP_S = 600.0


@dataclass(frozen=True)
class Hold:
    """Why an expert is held down, how many holds in a row, and until when."""

    kind: Literal["load", "calls"]
    error: str
    in_a_row: int
    until: float  # on the holds' clock


class DownHolds:
    """Holds by expert; thread-safe. `hold_s` 0 holds no one (a load is tried on every
    request and an unreachable endpoint asked every time, as without holds)."""

    def __init__(
        self, hold_s: float, after: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.hold_s, self.after, self.clock = hold_s, after, clock
        self._holds: dict[str, Hold] = {}
        self._streak: dict[str, int] = {}  # unreachable failures in a row, by expert
        self._lock = threading.Lock()

    def failed_load(self, expert: str, error: ConclaveError) -> float:
        """Hold `expert` down after a failed load; the seconds it is held for."""
        return self._hold(expert, "load", str(error.args[0] if error.args else error))

    def reset(self, expert: str) -> None:
        """Forget `expert`'s hold and count, as if it never failed."""
        with self._lock:
            self._holds.pop(expert, None)
            self._streak.pop(expert, None)

    def loaded(self, expert: str) -> None:
        """A load of `expert` worked: no hold, and the next one starts at `hold_s`."""
        with self._lock:
            self._holds.pop(expert, None)

    def observe(self, expert: str, results: Sequence[GenerationResult]) -> float:
        """Count `expert`'s answered and unreachable requests (in order); the seconds it is
        held for when they hold it down now, else 0. An answer clears the count and any
        earlier hold; after a hold, one unreachable failure holds it again."""
        hold = 0.0
        for r in results:
            if r.error is None:
                with self._lock:
                    self._streak.pop(expert, None)
                    if (h := self._holds.get(expert)) is not None and h.kind == "calls":
                        del self._holds[expert]
                continue
            if not error_class(r.error.type).unreachable:
                continue
            with self._lock:
                n = self._streak[expert] = self._streak.get(expert, 0) + 1
                before = self._holds.get(expert)
            on_trial = before is not None and before.kind == "calls"
            if n >= self.after or on_trial:
                last = r.error.message.removeprefix(f"[{expert}] ")
                why = f"{n} requests in a row failed, the last: {last}"
                hold = max(hold, self._hold(expert, "calls", why))
                with self._lock:
                    self._streak.pop(expert, None)
        return hold

    def _hold(self, expert: str, kind: Literal["load", "calls"], why: str) -> float:
        if self.hold_s <= 0:
            return 0.0
        with self._lock:
            before = self._holds.get(expert)
            if before is not None and before.until > self.clock():
                return 0.0  # held already (requests in flight when it was held)
            n = before.in_a_row + 1 if before is not None and before.kind == kind else 1
            hold = min(self.hold_s * 2.0 ** (n - 1), max(CAP_S, self.hold_s))
            self._holds[expert] = Hold(kind, why, n, self.clock() + hold)
        return hold

    def held(self, expert: str) -> ConclaveError | None:
        """The error a request for `expert` fails with now, untried; None when it may be
        tried (never held, or its hold is over)."""
        with self._lock:
            h = self._holds.get(expert)
        if h is None or (left := h.until - self.clock()) <= 0:
            return None
        again = f"held down after {h.in_a_row} hold(s) in a row, tried again in {left:.0f} s"
        if h.kind == "load":
            return ModelLoadError(
                f"its model failed to load ({h.error}); {again} (pool.down_hold_s)",
                expert=expert,
            )
        # the endpoint's own error class: what the request would have got, and a miss in
        # the free-agent monitor's record as it would have been
        return RemoteUnavailableError(
            f"its endpoint is not answering ({h.error}); {again} (pool.down_hold_s); ask "
            "another expert or retry then",
            expert=expert,
        )

    def down(self) -> set[str]:
        """Experts held down now."""
        now = self.clock()
        with self._lock:
            return {e for e, h in self._holds.items() if h.until > now}

    def why(self, expert: str) -> str | None:
        """Why `expert` is held down, for status pages; None when it is not."""
        err = self.held(expert)
        return str(err.args[0]) if err is not None else None
