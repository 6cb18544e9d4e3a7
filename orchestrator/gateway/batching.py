"""Micro-batching: concurrent requests for one model go to it as one batch.

A request waits up to `batch_window_ms` for company, then its batch runs in a worker
thread (`run_batch`: the facade for the routed ensemble, the pool for an expert), so the
engine sees the requests together. The queue is bounded: past `max_queue` requests
waiting or running, new ones get 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import GatewaySettings
from orchestrator.gateway.errors import GatewayError, as_gateway_error, shutting_down
from orchestrator.protocol import ChatRequest

log = logging.getLogger(__name__)

#: Calls at once to an engine that batches continuously (each holds a gateway thread while
#: its requests generate; more requests than this go together in the next call).
CONTINUOUS_SLOTS = 32

#: Routed lanes whose batches have threads ready at once (more wait for a thread).
ROUTED_LANES = 8

#: A batch's outcome per request: its response, or the error that is its answer alone.
Outcome = dict[str, Any] | GatewayError

#: How a batch answers request i before the batch ends: `deliver(i, outcome)`.
Deliver = Callable[[int, Outcome], None]

#: `run_batch(key, requests, deliver) -> outcomes`, in a worker thread.
RunBatch = Callable[[str, list[ChatRequest], Deliver | None], list[Outcome]]


#: Where a job queues: its model, and its lane within the model (one queue per pair).
Queue = tuple[str, str]


@dataclass
class _Job:
    key: str  # the model
    request: ChatRequest
    future: asyncio.Future[dict[str, Any]]
    enqueued: float = field(default_factory=time.perf_counter)


def _settle(future: asyncio.Future[dict[str, Any]], outcome: Outcome) -> None:
    """A job's answer, unless it has one (answered early, or its caller left)."""
    if future.done():
        return
    if isinstance(outcome, GatewayError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class MicroBatcher:
    """Batches jobs per key and runs each batch in a worker thread with
    `run_batch(key, requests, deliver) -> outcomes`: each job's response, or the
    GatewayError that is its answer alone (a request its expert refused fails; its
    neighbours do not). A batch may answer a job before it ends (`deliver(i, outcome)`,
    from its thread): the routed model's questions that one expert settled do not wait
    for those its router asks more experts about.

    Jobs queue per model and lane: one model's jobs batch together, except that the routed
    model's go by lane (`Conclave.lanes`: the experts each question is routed to), so the
    questions of a slow expert, or of one that is down, hold no slot the others need.
    A queue runs up to `slots(key)` batches at a time. A job that finds a slot free waits at
    most `window` seconds for company (or until `max_batch` jobs); jobs that arrive while
    every slot is busy queue and go together as the next batch, so under load batches
    grow by themselves and an idle key adds no more than the window.

    - An expert whose engine batches only what it is given at once (a remote API) has one
      slot.
    - An expert whose engine batches continuously (`continuous(key)`: a loaded vLLM engine
      adds new requests to its running batch at its next step) has `CONTINUOUS_SLOTS`: a
      job never waits for a running batch to finish, only for the window.
    - The routed model ('conclave', `ensemble_key`) has `routed_batches`: a pipeline, not
      a queue. A batch still escalating or voting does not hold back the next one, whose
      expert calls reach the engines while the first batch's are still generating.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        settings: GatewaySettings,
        continuous: Callable[[str], bool] = lambda _key: False,
        ensemble_key: str | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.settings = settings
        self.continuous = continuous
        self.ensemble_key = ensemble_key
        self.waiting: dict[Queue, list[_Job]] = {}
        self._depth = 0  # jobs queued or running, and streams running
        self._timers: dict[Queue, asyncio.TimerHandle] = {}
        self._busy: dict[Queue, set[asyncio.Task[None]]] = {}  # the running batches
        #: where batches (and token streams) run: blocking calls into the pool (threads
        #: start as needed: room for the routed batches of several lanes at once)
        self.threads = ThreadPoolExecutor(
            CONTINUOUS_SLOTS + ROUTED_LANES * settings.routed_batches + 8,
            thread_name_prefix="gateway",
        )
        self.closed = False

    @property
    def depth(self) -> int:
        """Requests waiting or running (the queue `max_queue` bounds)."""
        return self._depth

    @contextmanager
    def counted(self) -> Iterator[None]:
        """Count work that bypasses the batches (a token stream) in `depth` while it runs,
        so it too holds a place in the queue."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def slots(self, key: str) -> int:
        """Batches of `key` that may run at once (see the class docstring)."""
        if key == self.ensemble_key:
            return self.settings.routed_batches
        return CONTINUOUS_SLOTS if self.continuous(key) else 1

    def _full(self, queue: Queue) -> bool:
        return len(self._busy.get(queue, ())) >= self.slots(queue[0])

    def admit(self) -> None:
        """Refuse new work while shutting down (503) or past `max_queue` (429)."""
        if self.closed:
            raise shutting_down()
        if self._depth >= self.settings.max_queue:
            raise GatewayError(
                429,
                f"the gateway has {self._depth} requests waiting (max_queue); retry shortly",
                "rate_limit_error",
                "queue_full",
                retry_after=1,
            )

    async def submit(self, key: str, request: ChatRequest, lane: str = "") -> dict[str, Any]:
        """`request`'s response, once the batch it joins (in `key`'s `lane`) has run (504
        past `request_timeout_s`); a caller cancelled while queued drops its job."""
        self.admit()
        loop = asyncio.get_running_loop()
        job = _Job(key, request, loop.create_future())
        queue = (key, lane)
        self._depth += 1
        try:
            jobs = self.waiting.setdefault(queue, [])
            jobs.append(job)
            if self._full(queue):
                pass  # goes with the next batch, when a running one finishes
            elif len(jobs) >= self.settings.max_batch or self.settings.batch_window_ms == 0:
                self._flush(queue)
            elif queue not in self._timers:
                self._timers[queue] = loop.call_later(
                    self.settings.batch_window_ms / 1000, self._flush, queue
                )
            return await asyncio.wait_for(
                asyncio.shield(job.future), timeout=self.settings.request_timeout_s
            )
        except asyncio.CancelledError:
            job.future.cancel()  # the caller left: a batch not yet started skips this job
            raise
        except TimeoutError:
            raise GatewayError(
                504,
                f"no answer within {self.settings.request_timeout_s:g} s; the experts are "
                "busy or slow: retry, or raise gateway.request_timeout_s",
                "timeout_error",
                "timeout",
            ) from None
        finally:
            self._depth -= 1

    def _flush(self, queue: Queue) -> None:
        timer = self._timers.pop(queue, None)
        if timer is not None:
            timer.cancel()
        if self._full(queue):
            return
        jobs = self.waiting.pop(queue, [])
        live = [j for j in jobs if not j.future.done()]  # callers gone: their work too
        batch, rest = live[: self.settings.max_batch], live[self.settings.max_batch :]
        if rest:
            self.waiting[queue] = rest
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(queue[0], batch))
            self._busy.setdefault(queue, set()).add(task)
            task.add_done_callback(lambda t: self._next(queue, t))

    def _next(self, queue: Queue, done: asyncio.Task[None]) -> None:
        """A batch finished: the jobs that queued behind it go next, after the window,
        so that the callers it just answered can join them when they come straight back
        (a closed loop of clients otherwise splits into two half batches that take turns)."""
        busy = self._busy.get(queue, set())
        busy.discard(done)
        if not busy:
            self._busy.pop(queue, None)
        waiting = self.waiting.get(queue)
        if not waiting:
            return
        if len(waiting) >= self.settings.max_batch or self.settings.batch_window_ms == 0:
            self._flush(queue)
        elif queue not in self._timers:
            self._timers[queue] = asyncio.get_running_loop().call_later(
                self.settings.batch_window_ms / 1000, self._flush, queue
            )

    async def _run(self, key: str, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        answered: set[int] = set()  # delivered before the batch ended

        def deliver(i: int, outcome: Outcome) -> None:  # from the batch's thread
            answered.add(i)
            loop.call_soon_threadsafe(_settle, jobs[i].future, outcome)

        try:
            results = await loop.run_in_executor(
                self.threads, self._isolated, key, [j.request for j in jobs], deliver, answered
            )
        except Exception as exc:  # a bug here: every caller still hears why
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(as_gateway_error(exc))
            return
        for j, res in zip(jobs, results, strict=True):
            _settle(j.future, res)

    def _isolated(
        self, key: str, requests: list[ChatRequest], deliver: Deliver, answered: set[int]
    ) -> list[Outcome]:
        """`run_batch`, with each request's outcome its own: should the whole batch fail
        (a request that breaks what its batch shares), each request not answered yet runs
        again alone, so the failure is the answer of the request that caused it only."""
        try:
            return self.run_batch(key, requests, deliver)
        except Exception as exc:
            if len(requests) == 1:
                return [as_gateway_error(exc)]
            log.warning(
                "a batch of %d for %s failed (%s: %s); answering each request alone",
                len(requests),
                key,
                type(exc).__name__,
                exc,
            )
            skip: set[int] = set()  # a retry alone answers at its end (its result below)
            return [
                as_gateway_error(exc)  # answered already; its caller never reads this
                if i in answered
                else self._isolated(key, [r], lambda _i, _o: None, skip)[0]
                for i, r in enumerate(requests)
            ]

    async def drain(self) -> None:
        """Stop taking jobs; finish the ones already taken."""
        self.closed = True
        for queue in list(self.waiting):
            self._flush(queue)
        while self._busy or any(self.waiting.values()):
            running = [t for tasks in self._busy.values() for t in tasks]
            await asyncio.gather(*running, return_exceptions=True)
            await asyncio.sleep(0)  # let the done callbacks start the next batches
