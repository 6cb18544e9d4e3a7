"""Probe scheduling: validation questions with known answers, asked of serving experts
(and their challengers) beside live tasks so the free-agent monitor has accuracy
evidence when users send no gold answer or feedback (`free_agents.probes_per_task`)."""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Mapping, Sequence

from orchestrator.types import Item, Probe


class ProbeScheduler:
    """`probes_per_task` probes per (task, serving expert), credit carried across
    batches, each expert's list cycled in a shuffled order (an expert promoted without a
    list of its own gets every expert's); an expert under suspicion (`watch`) is owed them
    for every request of the batch, asked of it or not. Thread-safe: the gateway answers
    from several worker threads."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.asked = 0  # probe questions asked so far
        self._credit: dict[str, float] = {}  # probes owed per serving expert
        self._order: dict[str, list[int]] = {}  # each expert's probe cycle
        self._lock = threading.Lock()

    def draw(
        self,
        pairs: Sequence[tuple[Item, str]],
        banks: Mapping[str, list[Probe]],
        watch: Collection[str] = (),
        requests: int = 0,
    ) -> list[tuple[Item, str, list[str]]]:
        """(probe question, expert, its keywords) for this batch of (task, expert) pairs;
        each expert in `watch` is probed as if it took all `requests` of the batch."""
        if self.rate == 0 or not banks:
            return []
        out = []
        with self._lock:
            for ex in dict.fromkeys([*(ex for _, ex in pairs), *watch]):
                tasks = sum(e == ex for _, e in pairs)
                if ex in watch:
                    tasks = max(tasks, requests)
                owed = self._credit.get(ex, 0.0) + self.rate * tasks
                bank = banks.get(ex) or [p for ps in banks.values() for p in ps]
                while owed >= 1:
                    owed -= 1
                    if not self._order.get(ex):
                        order = list(range(len(bank)))
                        random.Random(f"{ex}|{self.asked}").shuffle(order)
                        self._order[ex] = order
                    probe = bank[self._order[ex].pop() % len(bank)]
                    self.asked += 1
                    new_id = f"probe{self.asked}:{probe.item.id}"
                    out.append((probe.item.model_copy(update={"id": new_id}), ex, probe.keywords))
                self._credit[ex] = owed
        return out
