"""Probe scheduling: validation questions with known answers, asked of serving experts
(and their challengers) beside live tasks so the free-agent monitor has accuracy
evidence when users send no gold answer or feedback (`free_agents.probes_per_task`)."""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Mapping, Sequence

from orchestrator.types import Item, Probe

#: The id prefix of a question from an expert's trial bank (`state.trials`), asked while
#: it is on probation; its own probes are "probe<n>:<id>".
TRIAL = "trial"


def kind(item_id: str) -> str:
    """The trace strategy of a drawn question: "trial" (from a trial bank) or "probe"."""
    return TRIAL if item_id.startswith(TRIAL) else "probe"


class ProbeScheduler:
    """`probes_per_task` probes per (task, serving expert), credit carried across
    batches, each expert's list cycled in a shuffled order (an expert promoted without a
    list of its own gets every expert's); an expert under suspicion (`watch`) is owed them
    for every request of the batch, asked of it or not, and every serving expert
    (`serving`) for at least its even share of the requests (1/n of them among n).
    Thread-safe: the gateway answers from several worker threads.

    The even share, because a fall is caught after so many graded answers, and an expert
    the router seldom asks earns them slowly: a specialist on one subject of fourteen took
    about one request in ten, and its fall was caught 31-83 requests after it came (21-28
    with its even share and its bank no longer padded: `orchestrator.profiling`)."""

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
        trials: Mapping[str, list[Probe]] | None = None,
        on_trial: Collection[str] = (),
        serving: Collection[str] = (),
    ) -> list[tuple[Item, str, list[str]]]:
        """(probe question, expert, its keywords) for this batch of (task, expert) pairs;
        each expert in `watch` is probed as if it took all `requests` of the batch, each
        in `serving` as if it took at least its even share of them; one in `on_trial`
        (on probation) is asked from its trial bank (`trials`) where it has one, its
        questions' ids "trial<n>:<id>"."""
        if self.rate == 0 or not banks:
            return []
        out = []
        share = requests / len(serving) if serving else 0.0
        with self._lock:
            for ex in dict.fromkeys([*(ex for _, ex in pairs), *watch, *serving]):
                tasks: float = sum(e == ex for _, e in pairs)
                if ex in serving:
                    tasks = max(tasks, share)
                if ex in watch:
                    tasks = max(tasks, requests)
                owed = self._credit.get(ex, 0.0) + self.rate * tasks
                trial = (trials or {}).get(ex) if ex in on_trial else None
                bank = trial or banks.get(ex) or [p for ps in banks.values() for p in ps]
                cycle, prefix = (f"{ex}|{TRIAL}", TRIAL) if trial else (ex, "probe")
                while owed >= 1:
                    owed -= 1
                    if not self._order.get(cycle):
                        order = list(range(len(bank)))
                        random.Random(f"{cycle}|{self.asked}").shuffle(order)
                        self._order[cycle] = order
                    probe = bank[self._order[cycle].pop() % len(bank)]
                    self.asked += 1
                    new_id = f"{prefix}{self.asked}:{probe.item.id}"
                    out.append((probe.item.model_copy(update={"id": new_id}), ex, probe.keywords))
                self._credit[ex] = owed
        return out
