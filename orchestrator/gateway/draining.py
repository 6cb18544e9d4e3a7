"""Stopping without dropping work: a drain before the socket closes.

uvicorn closes its listening socket on the first SIGTERM or SIGINT, so a load balancer
probing /readyz sees a refused connection, never "shutting down", and cannot tell a drain
from a crash. `DrainingServer` first stops taking work while the socket stays open: the
batcher answers new requests 503 and /readyz answers 503 "shutting down"; once nothing
is in flight (or `gateway.drain_s` has passed) it shuts down as uvicorn does, and the
app's lifespan finishes what the batcher still holds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from orchestrator.gateway.batching import MicroBatcher


class DrainingServer(uvicorn.Server):
    """uvicorn with a drain on the first signal; a second signal stops at once."""

    def __init__(
        self,
        config: uvicorn.Config,
        batcher: MicroBatcher,
        drain_s: float,
        on_event: Callable[[str], None] = print,
    ) -> None:
        super().__init__(config)
        self.batcher, self.drain_s, self.on_event = batcher, drain_s, on_event
        self.deadline: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_event("ready: taking connections")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.deadline is not None or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self.batcher.closed = True
        self.deadline = time.monotonic() + self.drain_s
        self.on_event(
            f"draining: {self.batcher.depth} requests in flight; new work gets 503 (at most "
            f"{self.drain_s:g} s; a second signal stops now)"
        )

    async def on_tick(self, counter: int) -> bool:
        if self.deadline is not None and (
            self.batcher.depth == 0 or time.monotonic() >= self.deadline
        ):
            self.on_event(f"drained ({self.batcher.depth} requests left); closing")
            return True
        return bool(await super().on_tick(counter))
