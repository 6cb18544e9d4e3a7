"""The free-agent monitor's figures in the Ray dashboard (`ray_conclave_agent_*`): the
latest reward per agent, decisions by kind, swaps, and which agents are flagged (released
with no free agent to replace them). No-ops without Ray."""

from __future__ import annotations

import sys
import threading
from typing import Any


class AgentMetrics:
    def __init__(self) -> None:
        self._m: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _metrics(self) -> dict[str, Any] | None:
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return None
        with self._lock:
            if self._m is None:
                from ray.util.metrics import Counter, Gauge

                self._m = {
                    "reward": Gauge("conclave_agent_reward", "Latest reward.", ("agent",)),
                    "decisions": Counter(
                        "conclave_agent_decisions", "Monitor decisions.", ("event", "agent")
                    ),
                    "swaps": Counter("conclave_agent_swaps", "Promotions.", ("agent", "replaced")),
                    "flagged": Gauge(
                        "conclave_agent_flagged",
                        "1 while an agent is flagged with no free agent to replace it.",
                        ("agent",),
                    ),
                }
            return self._m

    def reward(self, agent: str, value: float) -> None:
        if (m := self._metrics()) is not None:
            m["reward"].set(value, {"agent": agent})

    def decision(self, event: str, agent: str) -> None:
        if (m := self._metrics()) is not None:
            m["decisions"].inc(1, {"event": event, "agent": agent})

    def swap(self, agent: str, replaced: str) -> None:
        if (m := self._metrics()) is not None:
            m["swaps"].inc(1, {"agent": agent, "replaced": replaced})

    def flag(self, agent: str, on: bool) -> None:
        if (m := self._metrics()) is not None:
            m["flagged"].set(1.0 if on else 0.0, {"agent": agent})
