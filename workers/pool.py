"""The expert pool: batched, load-once scheduling with a memory budget (Symbolic-MoE §3.4).

Given a batch of requests, the pool groups them by expert, loads each expert at most once
for the batch, runs each group as one engine batch and returns the results in input
order. Experts already resident go first (they cost no load). While the sum of resident
experts' `memory_gb` fits `pool.memory_budget_gb`, models stay loaded across batches, so a
second batch over the same experts loads nothing; when a new model does not fit, the pool
evicts the resident model needed least in the rest of the batch (then the least recently
used). Groups on different actors load and generate concurrently, up to
`max_parallel_groups`; memory is granted to them in order, before they start.

Failures are data: a model that fails to load yields error results naming the expert and
the cause for its items; an engine that dies mid-batch is restarted and its items retried
once; a request for an unknown expert gets an `UnknownExpertError` result. Every request
gets exactly one result.

Batches may run at once from several threads (the gateway keeps several routed batches in
flight). Each group holds a claim on its expert while it generates, and an eviction waits
until no batch's claim is left; one batch at a time decides loads and evictions, so two
batches never load one model twice. A batch whose experts are all loaded claims them and
runs without waiting for that.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

from orchestrator.config import ConclaveConfig
from orchestrator.errors import (
    ConclaveError,
    EngineDeadError,
    ExpertUnavailableError,
    GenerationError,
    ModelLoadError,
    UnknownExpertError,
)
from workers.backend import ExpertBackend, make_backend
from workers.backoff import DownHolds
from workers.batch import GenerationRequest, GenerationResult
from workers.holdings import Holdings, needs
from workers.metrics import ExpertMetrics, ExpertStatus, PoolStats
from workers.progress import ItemProgress

log = logging.getLogger(__name__)


class ExpertPool:
    """Runs batches of generation requests over the configured experts."""

    def __init__(
        self, config: ConclaveConfig, backends: dict[str, ExpertBackend] | None = None
    ) -> None:
        self.config = config
        self.metrics = ExpertMetrics()  # per expert, in the Ray dashboard
        self.backends: dict[str, ExpertBackend] = backends or {
            e.name: make_backend(e, config) for e in config.pool.experts
        }
        self.stats = PoolStats()
        self._lock = threading.Lock()
        self._last_used: dict[str, float] = {}
        # Memory and actor resources the pool has granted, by expert (see holdings.py).
        self._held = Holdings()
        self._executor = ThreadPoolExecutor(
            max_workers=config.pool.max_parallel_groups, thread_name_prefix="pool-group"
        )
        #: per expert, the groups generating on it now (in any batch): not evicted under them
        self._using: Counter[str] = Counter()
        self._residency = threading.Condition()
        #: one batch at a time decides loads and evictions
        self._scheduling = threading.Lock()
        #: experts whose dead engine is being restarted, and when that is done
        self._restarting: dict[str, Future[None]] = {}
        self._closing = False  # set by close: an engine that dies now stays dead
        #: experts held down after failing (a failed load, an endpoint not answering)
        self.holds = DownHolds(config.pool.down_hold_s, config.pool.down_after)

    # ---- public API -------------------------------------------------------------------

    @property
    def resident(self) -> list[str]:
        """Experts whose model is loaded now."""
        return [n for n, b in self.backends.items() if b.loaded and b.resident]

    def run(
        self,
        requests: list[GenerationRequest],
        progress: bool = False,
        wait_for_restart: bool = True,
    ) -> list[GenerationResult]:
        """Answer every request; results come back in input order, one per request.

        An expert whose engine dies is restarted in the background (one restart however
        many batches saw it die). With `wait_for_restart` (a client that named the
        expert) its requests wait for the restart and are run then; without (a router
        that can ask another expert) they fail at once with `ExpertUnavailableError`, so
        nothing routed elsewhere waits for the reload."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            if req.expert in self.backends:
                groups[req.expert].append(i)
            else:
                results[i] = GenerationResult.failed(req, self._unknown(req.expert))
        for name in list(groups):
            held = self.holds.held(name)
            if held is not None:  # it keeps failing: not tried again until its hold ends
                self._fail(name, groups.pop(name), requests, results, held)
        if not groups:
            return _complete(results)

        if len(groups) == 1 and not progress:
            # One loaded expert (a gateway's passthrough batch): run it on this thread, so
            # callers of an engine that batches continuously are not capped by the group
            # threads, and the hop is saved.
            ((name, idx),) = groups.items()
            backend = self.backends[name]
            if self._claim_loaded([name]):
                try:
                    self._last_used[name] = time.monotonic()
                    self.metrics.queued(name, len(idx))
                    for i, res in zip(
                        idx,
                        self._run_group(backend, [requests[i] for i in idx], wait_for_restart),
                        strict=True,
                    ):
                        results[i] = res
                finally:
                    self._release(name)
                return _complete(results)
        # every expert loaded: claimed, and no need to wait for another batch's loads
        claimed = self._claim_loaded(list(groups))
        with contextlib.nullcontext() if claimed else self._scheduling:
            self._schedule(requests, groups, results, progress, claimed, wait_for_restart)
        return _complete(results)

    def _schedule(
        self,
        requests: list[GenerationRequest],
        groups: dict[str, list[int]],
        results: list[GenerationResult | None],
        progress: bool,
        claimed: bool,
        wait: bool,
    ) -> None:
        """Load (evicting as needed) and run each group, filling `results`; each group's
        expert is claimed until it is done (already, when `claimed`). A group whose
        expert is restarting waits for it (`wait`) or fails at once."""
        # Resident experts first: they cost no load and become evictable once submitted.
        order = sorted(groups, key=lambda n: (not self.backends[n].loaded, groups[n][0]))
        pending = {n: len(groups[n]) for n in order}
        next_use = {n: pos for pos, n in enumerate(order)}
        in_flight: dict[str, Future[list[GenerationResult]]] = {}

        bar = ItemProgress(len(requests), enabled=progress)
        with bar:
            bar.advance(sum(r is not None for r in results))
            for name in order:
                backend = self.backends[name]
                group = [requests[i] for i in groups[name]]
                restart = None if claimed else self._restart_of(name)
                if restart is not None:
                    if wait:
                        in_flight[name] = self._executor.submit(
                            self._after_restart, backend, group, restart
                        )
                    else:
                        for i, req in zip(groups[name], group, strict=True):
                            results[i] = GenerationResult.failed(req, _restarting(name))
                    bar.advance(len(group))
                    pending[name] = 0
                    next_use.pop(name)
                    continue
                needs_load = not claimed and not self._claim_loaded([name])
                if needs_load:
                    try:
                        backend.prepare()
                        self._make_room(backend, pending, next_use, in_flight)
                    except ConclaveError as exc:
                        self._fail(name, groups[name], requests, results, exc)
                        bar.advance(len(group))
                        pending[name] = 0
                        continue
                    self._held.grant(backend)
                    self._claim(name)
                bar.describe(f"{'loading' if needs_load else 'generating'} {name}")
                self._last_used[name] = time.monotonic()
                # Loads run in the group's thread too, so models load side by side (on a
                # GPU cluster, each on its own GPUs) while memory is granted in order here.
                self.metrics.queued(name, len(group))
                fut = self._executor.submit(self._load_and_run, backend, group, needs_load, wait)
                fut.add_done_callback(partial(bar.advance_when_done, len(group)))
                fut.add_done_callback(partial(self._released, name))
                in_flight[name] = fut
                pending[name] = 0
                next_use.pop(name)
            # every group is under way: the last one started no longer says what runs
            if len(in_flight) > 1:
                bar.describe(f"{len(in_flight)} experts answering")
            for name, fut in in_flight.items():
                for i, res in zip(groups[name], fut.result(), strict=True):
                    results[i] = res

    def _fail(
        self,
        name: str,
        idx: list[int],
        requests: list[GenerationRequest],
        results: list[GenerationResult | None],
        exc: ConclaveError,
    ) -> None:
        """`name`'s requests at `idx` fail with `exc`, untried; counted as its errors."""
        failed = [GenerationResult.failed(requests[i], exc) for i in idx]
        for i, res in zip(idx, failed, strict=True):
            results[i] = res
        self.metrics.batch(name, failed, 0.0)

    def connect(self) -> dict[str, str]:
        """Each backend's `prepare` (a vLLM expert's: connect to Ray, starting a local
        cluster), here, on the calling thread: a server calls it on its main thread before
        it serves, since Ray installs its signal handlers only there and a first request
        would otherwise start Ray from a worker thread. Returns the failures by expert
        (those experts then fail their requests, as they would have)."""
        failed: dict[str, str] = {}
        for name, backend in self.backends.items():
            try:
                backend.prepare()
            except ConclaveError as exc:
                failed[name] = str(exc)
        return failed

    def preload(self, names: Sequence[str] | None = None, progress: bool = False) -> dict[str, str]:
        """Load the experts (all, or `names`, in that order) that fit side by side, evicting
        none: a server's first answers then wait for no model load, and an expert that does
        not fit next to the ones before it loads on demand later. Loads run concurrently,
        each in its own actor. Returns each expert's outcome: "loaded", "resident",
        "skipped: <what it lacks>" or "failed: <why>"."""
        chosen = list(self.backends) if names is None else list(names)
        unknown = [n for n in chosen if n not in self.backends]
        if unknown:
            raise self._unknown(unknown[0])
        outcome: dict[str, str] = {}
        loading: dict[str, Future[None]] = {}
        bar = ItemProgress(len(chosen), enabled=progress)
        with bar:
            for name in chosen:
                backend = self.backends[name]
                if backend.loaded:
                    outcome[name] = "resident"
                    continue
                try:
                    backend.prepare()
                    why = self._held.shortfall(backend, self._limits(backend))
                except ConclaveError as exc:
                    outcome[name] = f"failed: {exc}"
                    continue
                if why is not None:
                    outcome[name] = f"skipped: does not fit next to the others: {why}"
                    continue
                self._held.grant(backend)
                bar.describe(f"loading {name}")
                loading[name] = self._executor.submit(self._load, backend)
                loading[name].add_done_callback(lambda _f: bar.advance(1))
            bar.advance(len(chosen) - len(loading))
            for name, fut in loading.items():
                try:
                    fut.result()
                except ConclaveError as exc:
                    self._held.release(name)
                    outcome[name] = f"failed: {exc}"
                    continue
                self._last_used[name] = time.monotonic()
                outcome[name] = "loaded"
        return {n: outcome[n] for n in chosen}

    def batches_continuously(self, name: str) -> bool:
        """Whether expert `name` is loaded on an engine that batches continuously: a request
        sent while it generates joins its running batch, and `stream` sends the answer
        piece by piece. False for an unknown name, and while the model is still loading."""
        backend = self.backends.get(name)
        return bool(backend is not None and backend.continuous_batching and backend.loaded)

    def stream(self, request: GenerationRequest) -> Iterator[str | GenerationResult]:
        """One request's answer in pieces as its engine generates them, then its result.
        An expert that is not loaded yet is loaded and asked through `run` (its answer then
        comes in one piece); a failure comes back as a failed result, as from `run`."""
        backend = self.backends.get(request.expert)
        held = self.holds.held(request.expert)
        if backend is None or held is not None or not self._claim_loaded([backend.name]):
            (ran,) = self.run([request])
            if ran.ok and ran.text:
                yield ran.text
            yield ran
            return
        name, t0 = backend.name, time.perf_counter()
        self._last_used[name] = time.monotonic()
        result: GenerationResult | None = None
        try:
            for event in backend.stream(request):
                if isinstance(event, GenerationResult):
                    result = event
                yield event
        except Exception as exc:
            result = GenerationResult.failed(request, _as_error(exc, name))
            yield result
        finally:
            self._release(name)
        if result is not None:
            self.metrics.batch(name, [result], time.perf_counter() - t0)
            self._observe(name, [result])

    def status(self) -> list[ExpertStatus]:
        """Each expert's state now and its figures since the pool started."""
        with self._residency:
            restarting = set(self._restarting)
        out = []
        for name, b in self.backends.items():
            live = self.metrics.live(
                name,
                b.loaded,
                "its engine died and is restarting" if name in restarting else self.holds.why(name),
            )
            if (dtype := b.dtype) is not None:
                live = live.model_copy(update={"dtype": dtype[0], "dtype_why": dtype[1]})
            out.append(live)
        return out

    def unload(self, name: str) -> None:
        """Free `name`'s model, or stop its load under way (the backend's `unload`)."""
        self.backends[name].unload()
        self._held.release(name)

    def unload_all(self) -> None:
        for name in list(self.backends):
            self.unload(name)

    def close(self) -> None:
        """Stop: every engine goes, and nothing is restarted (a batch still generating
        fails, as its engine is gone, instead of reloading it)."""
        self._closing = True
        self.unload_all()  # loaded or still loading: a load under way fails now
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ExpertPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- scheduling -------------------------------------------------------------------

    def _claim_loaded(self, names: Sequence[str]) -> bool:
        """Claim every one of `names` if all are loaded now and none is restarting
        (nothing evicts them until released); False, claiming none, otherwise."""
        with self._residency:
            if not all(self.backends[n].loaded and n not in self._restarting for n in names):
                return False
            self._using.update(names)
            return True

    def _claim(self, name: str) -> None:
        with self._residency:
            self._using[name] += 1

    def _release(self, name: str) -> None:
        with self._residency:
            self._using[name] -= 1
            self._residency.notify_all()

    def _released(self, name: str, _done: Future[list[GenerationResult]]) -> None:
        self._release(name)

    def _idle(self, name: str) -> bool:
        return self._using[name] == 0

    def _unknown(self, name: str) -> UnknownExpertError:
        known = ", ".join(sorted(self.backends))
        return UnknownExpertError(f"no expert named {name!r} in the pool; known: {known}")

    def _limits(self, backend: ExpertBackend) -> dict[str, float]:
        """What the pool may hold at once: the memory budget and the cluster's CPUs and
        GPUs (one query of the cluster)."""
        budget = self.config.pool.memory_budget_gb
        return {**backend.cluster_capacity(), "memory_gb": budget or float("inf")}

    def _make_room(
        self,
        backend: ExpertBackend,
        pending: dict[str, int],
        next_use: dict[str, int],
        in_flight: dict[str, Future[list[GenerationResult]]],
    ) -> None:
        """Evict resident models until `backend` fits: the memory budget, and the
        cluster's CPUs and GPUs (an actor that cannot be placed would wait forever)."""
        budget = self.config.pool.memory_budget_gb
        need = needs(backend).get("memory_gb", 0)
        if budget is not None and need > budget:
            raise ModelLoadError(
                f"needs {need} GB (resources.memory_gb) but "
                f"pool.memory_budget_gb is {budget}; raise the budget or lower the estimate",
                expert=backend.name,
            )
        limits = self._limits(backend)
        while (why := self._held.shortfall(backend, limits)) is not None:
            victims = [self.backends[n] for n in self._held.holders(excluding=backend.name)]
            if not victims:
                raise ModelLoadError(f"does not fit: {why}", expert=backend.name)

            # Needed least in the rest of the batch, then used furthest ahead, then idle
            # before still generating (no wait), then least recently used.
            def cost(b: ExpertBackend) -> tuple[int, int, bool, float]:
                fut = in_flight.get(b.name)
                return (
                    pending.get(b.name, 0),
                    -next_use.get(b.name, 1 << 30),
                    fut is not None and not fut.done(),
                    self._last_used.get(b.name, 0.0),
                )

            victim = min(victims, key=cost)
            log.info("evicting %s to make room for %s: %s", victim.name, backend.name, why)
            with self._residency:
                # let its groups finish, this batch's and others', before freeing its memory
                self._residency.wait_for(partial(self._idle, victim.name))
                victim.unload()
            self.metrics.eviction(victim.name)
            self._held.release(victim.name)
            with self._lock:
                self.stats.evictions += 1

    def _load(self, backend: ExpertBackend, again: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            backend.reload() if again else backend.load()
        except Exception as exc:  # a backend bug or library error: still data, not a crash
            err = (
                exc
                if isinstance(exc, ConclaveError)
                else ModelLoadError(f"{type(exc).__name__}: {exc}", expert=backend.name)
            )
            with self._lock:
                self.stats.load_failures += 1
            if not self._closing:  # a load stopped by close is no fault of the model's
                hold = self.holds.failed_load(backend.name, err)
                if hold:
                    log.warning(
                        "%s: its model failed to load (%s); down for %.0f s "
                        "(pool.down_hold_s): routed questions go to the next best",
                        backend.name,
                        err,
                        hold,
                    )
            if err is exc:
                raise
            raise err from exc
        self.holds.loaded(backend.name)
        self.metrics.load(backend.name)
        with self._lock:
            self.stats.loads += 1
            self.stats.loads_by_expert[backend.name] += 1
            self.stats.load_seconds += time.perf_counter() - t0

    def _load_and_run(
        self,
        backend: ExpertBackend,
        group: list[GenerationRequest],
        needs_load: bool,
        wait: bool = True,
    ) -> list[GenerationResult]:
        if needs_load:
            try:
                self._load(backend)
            except ConclaveError as exc:
                self._held.release(backend.name)
                failed = [GenerationResult.failed(r, exc) for r in group]
                self.metrics.batch(backend.name, failed, 0.0)
                self.metrics.queued(backend.name, 0)
                return failed
        return self._run_group(backend, group, wait)

    def _run_group(
        self, backend: ExpertBackend, group: list[GenerationRequest], wait: bool = True
    ) -> list[GenerationResult]:
        t0 = time.perf_counter()
        out = self._generate_group(backend, group, wait)
        self.metrics.batch(backend.name, out, time.perf_counter() - t0)
        self.metrics.queued(backend.name, 0)
        self._observe(backend.name, out)
        return out

    def _observe(self, name: str, results: Sequence[GenerationResult]) -> None:
        """Count answered and unreachable requests; hold `name` down when it keeps failing."""
        hold = self.holds.observe(name, results)
        if hold:
            log.warning(
                "%s: its endpoint keeps failing; down for %.0f s (pool.down_hold_s): routed "
                "questions go to the next best",
                name,
                hold,
            )

    def _generate_group(
        self, backend: ExpertBackend, group: list[GenerationRequest], wait: bool = True
    ) -> list[GenerationResult]:
        try:
            return self._checked(backend, group, backend.generate(group))
        except EngineDeadError as exc:
            if self._closing:  # killed by close (or dying as it runs): not reloaded
                return [GenerationResult.failed(r, exc) for r in group]
            restart = self._restart(backend, exc)
            if not wait:
                return [GenerationResult.failed(r, _restarting(backend.name)) for r in group]
            try:
                restart.result()
                out = self._checked(backend, group, backend.generate(group))
            except Exception as exc2:
                err = _as_error(exc2, backend.name)
                return [GenerationResult.failed(r, err, attempts=2) for r in group]
            for r in out:
                r.attempts += 1
            return out
        except Exception as exc:
            err = _as_error(exc, backend.name)
            return [GenerationResult.failed(r, err) for r in group]

    def _restart_of(self, name: str) -> Future[None] | None:
        with self._residency:
            return self._restarting.get(name)

    def _restart(self, backend: ExpertBackend, why: Exception) -> Future[None]:
        """The restart of `backend`'s dead engine: started here in a thread of its own, or
        the one already under way (several batches can see one engine die)."""
        with self._residency:
            fut = self._restarting.get(backend.name)
            if fut is not None:
                return fut
            fut = Future()
            self._restarting[backend.name] = fut
        log.warning("%s died (%s); restarting it", backend.name, why)
        with self._lock:
            self.stats.restarts += 1
        threading.Thread(
            target=self._do_restart, args=(backend, fut), name=f"restart-{backend.name}"
        ).start()
        return fut

    def _do_restart(self, backend: ExpertBackend, fut: Future[None]) -> None:
        try:
            backend.unload()
            self._load(backend, again=True)
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        finally:
            with self._residency:
                self._restarting.pop(backend.name, None)
                self._residency.notify_all()

    def _after_restart(
        self, backend: ExpertBackend, group: list[GenerationRequest], restart: Future[None]
    ) -> list[GenerationResult]:
        """A group that waited for its expert's restart: run once it is back."""
        try:
            restart.result()
        except Exception as exc:
            err = _as_error(exc, backend.name)
            return [GenerationResult.failed(r, err) for r in group]
        if not self._claim_loaded([backend.name]):  # evicted or dead again meanwhile
            return [GenerationResult.failed(r, _restarting(backend.name)) for r in group]
        try:
            return self._run_group(backend, group)
        finally:
            self._release(backend.name)

    def unavailable(self) -> set[str]:
        """Experts down now: their engine is restarting, or they keep failing and are held
        down (`holds`: a failed load, an endpoint not answering). A router skips them."""
        with self._residency:
            restarting = set(self._restarting)
        return restarting | self.holds.down()

    @staticmethod
    def _checked(
        backend: ExpertBackend, group: list[GenerationRequest], out: list[GenerationResult]
    ) -> list[GenerationResult]:
        if len(out) != len(group) or any(
            o.item_id != r.item_id for o, r in zip(out, group, strict=True)
        ):
            raise GenerationError(
                f"backend returned {len(out)} results for {len(group)} requests, or out of order",
                expert=backend.name,
            )
        return out


def _restarting(expert: str) -> ExpertUnavailableError:
    return ExpertUnavailableError(
        "its engine died and is restarting; ask another expert or retry shortly",
        expert=expert,
    )


def _as_error(exc: Exception, expert: str) -> ConclaveError:
    """A backend's exception as the pool reports it: ours as they are, any other (a
    backend bug, a library error) as a GenerationError naming its type."""
    if isinstance(exc, ConclaveError):
        return exc
    return GenerationError(f"{type(exc).__name__}: {exc}", expert=expert)


def _complete(results: list[GenerationResult | None]) -> list[GenerationResult]:
    """The results, once every request has one."""
    done = [r for r in results if r is not None]
    assert len(done) == len(results), "a request got no result"
    return done
