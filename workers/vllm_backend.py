"""A vLLM engine in a Ray actor of its own: one actor per resident model.

Loading an expert creates its actor (named `expert:<name>` so the Ray dashboard shows it),
placed by the expert's resources; unloading kills the actor, which frees the model's
memory with its process. One engine per process is also what vLLM's in-process mode
requires (a second engine in the same process fails for MoE models).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import logging
import os
import queue
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from orchestrator.config import VLLMBackendConfig
from orchestrator.errors import (
    EngineDeadError,
    GenerationError,
    ModelLoadError,
    RequestRejectedError,
)
from workers.backend import ExpertBackend
from workers.batch import GenerationRequest, GenerationResult
from workers.cluster import ensure_ray

log = logging.getLogger(__name__)


@functools.cache
def _refusals() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it will not run (its client errors, and the
    ValueError/TypeError of its older validation); anything else is the engine's fault."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # vLLM not installed here, or a version without the split
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


#: Calls an engine actor takes at once (each waits in a thread of its own while the
#: engine batches their requests together).
ENGINE_CALLS = 256


class EngineHost:
    """The actor's body (wrapped with `ray.remote` at load time, so importing is cheap).

    Continuous batching: the actor is threaded (`max_concurrency`), and one thread of its
    own owns the engine. `generate` hands its requests to that thread and waits; the thread
    adds them to the engine between two steps, so a request that arrives while others are
    generating joins the running batch at the next step instead of waiting for it to
    finish (what vLLM's own server does with AsyncLLM). Every call into the engine runs on
    that one thread: vLLM's in-process engine is not thread-safe.
    """

    def __init__(self, model: str, tokenizer: str | None, engine_args: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        import dataclasses

        import torch

        if not torch.cuda.is_available() and hasattr(torch.cpu, "_init_amx"):
            # vLLM's CPU kernels use AMX tiles; without asking the kernel for AMX state
            # first, some prompt shapes (a 1-token prompt, for one) die with SIGILL.
            torch.cpu._init_amx()
        from vllm import LLM, EngineArgs

        allowed = {f.name for f in dataclasses.fields(EngineArgs)}
        for key in engine_args:
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=3)
                hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
                raise ValueError(f"engine_args has unknown vLLM engine argument {key!r}{hint}")
        if not os.path.exists(model) and (model.startswith(("/", ".", "~")) or os.sep * 2 in model):
            raise FileNotFoundError(f"model path {model!r} does not exist")
        self.llm = LLM(model=model, tokenizer=tokenizer, **engine_args)
        self.load_s = time.perf_counter() - t0
        from vllm.platforms import current_platform

        # vLLM's CPU sampler cannot honour per-request seeds ("CPU Generator does not use
        # offset", and the engine is left stuck): on CPU, a call on an idle engine seeds
        # the sampler from its requests' seeds instead (`_reseed`)
        self.request_seeds = not current_platform.is_cpu()
        self._inbox: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._running: dict[str, _Slot | _Stream] = {}  # engine request id -> its caller
        self._broken: BaseException | None = None
        gc.collect()  # the engine's objects live as long as the actor: keep full
        gc.freeze()  # collections from walking them between two steps
        threading.Thread(target=self._loop, name="engine-steps", daemon=True).start()

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "load_s": self.load_s}

    # ---- the engine's thread --------------------------------------------------------------

    def _on_engine(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the engine's thread, between two steps, and return its result."""
        if self._broken is not None:
            raise RuntimeError(f"the engine failed earlier and must restart: {self._broken}")
        fut: Future[Any] = Future()
        self._inbox.put((fn, fut))
        return fut.result()

    def _loop(self) -> None:
        engine = self.llm.llm_engine
        while True:
            # Idle: sleep until work comes. Busy: take whatever came, then step.
            tasks = [] if self._running else [self._inbox.get()]
            while True:
                try:
                    tasks.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for fn, fut in tasks:
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)
            if not self._running:
                continue
            try:
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"the engine lost {len(self._running)} requests")
                outputs = engine.step()
            except BaseException as exc:  # the engine is unusable: every caller hears why
                self._broken = exc
                for owner in self._running.values():
                    owner.fail(exc)
                self._running.clear()
                self._fail_inbox(exc)
                return
            for ro in outputs:
                owner = self._running.get(ro.request_id)
                if owner is not None:
                    owner.update(ro)
                    if ro.finished:
                        del self._running[ro.request_id]

    def _fail_inbox(self, exc: BaseException) -> None:
        while True:
            try:
                _fn, fut = self._inbox.get_nowait()
            except queue.Empty:
                return
            fut.set_exception(exc)

    # ---- calls ------------------------------------------------------------------------------

    def _params(self, it: dict[str, Any]) -> Any:
        from vllm import SamplingParams

        s = it["sampling"]
        return SamplingParams(
            temperature=s["temperature"],
            top_p=s["top_p"],
            max_tokens=s["max_tokens"],
            seed=s["seed"] if self.request_seeds else None,
            stop=s["stop"] or None,
        )

    def _reseed(self, items: list[dict[str, Any]]) -> None:
        """On the engine thread, before adding `items`: where the engine cannot seed each
        request (the CPU build), seed its sampler from their seeds when nothing else runs,
        so a call on an idle engine samples the same whatever the engine answered before
        (an eval reusing a cached profile draws the keywords a fresh one drew)."""
        seeds = [it["sampling"]["seed"] for it in items]
        if self.request_seeds or self._running or None in seeds:
            return
        import torch

        torch.manual_seed(zlib.crc32(repr(seeds).encode()))

    def generate(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answer `items` (chat messages or raw prompts); they join the running batch."""
        params = self._params
        call = _Call(len(items))

        def add() -> None:
            self._reseed(items)
            for i, it in enumerate(items):
                try:
                    if it["messages"] is not None:
                        (rid,) = self.llm.enqueue_chat(
                            [it["messages"]], sampling_params=[params(it)], use_tqdm=False
                        )
                    else:
                        (rid,) = self.llm.enqueue(
                            [it["prompt"]], sampling_params=[params(it)], use_tqdm=False
                        )
                except _refusals() as exc:  # vLLM refused this request (too long, say): the
                    call.reject(i, str(exc))  # engine is fine, its other requests go on
                    continue
                # add_request returns the engine's id ("<ours>-<random>"); outputs carry ours
                self._running[rid.split("-", 1)[0]] = _Slot(call, i)

        if items:
            self._on_engine(add)
        return call.future.result() if items else []

    def stream(self, item: dict[str, Any], stream_id: str) -> Iterator[dict[str, Any]]:
        """Answer one item token by token: {"delta": text} as the engine generates it,
        then the result (as `generate` gives it). A Ray streaming generator; `abort` with
        the same `stream_id` stops it and frees its place in the batch."""
        from vllm.sampling_params import RequestOutputKind

        params = self._params(item)
        params.output_kind = RequestOutputKind.CUMULATIVE
        if item["messages"] is not None:
            # rendered here, in the caller's thread, as vLLM's chat() renders it: the
            # template's text, tokenized without adding special tokens again
            tok = self.llm.get_tokenizer()
            text = tok.apply_chat_template(
                item["messages"], add_generation_prompt=True, tokenize=False
            )
            prompt: Any = {"prompt_token_ids": tok.encode(text, add_special_tokens=False)}
        else:
            prompt = item["prompt"]
        stream = _Stream()

        def add() -> str | None:
            self._reseed([item])
            try:
                self.llm.llm_engine.add_request(stream_id, prompt, params)
            except _refusals() as exc:  # refused (too long, say): the engine is fine
                return str(exc)
            self._running[stream_id] = stream
            return None

        refused = self._on_engine(add)
        if refused is not None:
            yield {"error": refused}
            return
        while True:
            event = stream.events.get()
            if isinstance(event, BaseException):
                raise event
            if event is None:
                return
            yield event

    def abort(self, stream_id: str) -> None:
        """Stop a stream whose reader left: the engine drops the request."""

        def drop() -> None:
            owner = self._running.pop(stream_id, None)
            if owner is not None:
                self.llm.llm_engine.abort_request([stream_id])
                owner.fail(None)

        self._on_engine(drop)

    def expert_counts(self, items: list[dict[str, Any]]) -> list[list[int]]:
        """Generate `items`, counting per MoE layer the tokens (prompt and completion) the
        router sent to each in-model expert: its top-k router logits, read by a hook on
        each MoE block's gate. (vLLM's own enable_return_routed_experts needs Model Runner
        V2, which needs Triton: not on the CPU build.) Tokens of other requests the engine
        runs meanwhile count too: profile an otherwise idle expert."""
        self._on_engine(lambda: self.llm.apply_model(_install_expert_counters))
        try:
            self.generate(items)
        finally:
            counts = self._on_engine(lambda: self.llm.apply_model(_remove_expert_counters))
        return counts[0]


def _result(ro: Any) -> dict[str, Any]:
    c = ro.outputs[0]
    return {
        "text": c.text,
        "finish_reason": c.finish_reason,
        "prompt_tokens": len(ro.prompt_token_ids or []),
        "completion_tokens": len(c.token_ids),
    }


class _Call:
    """One `generate` call: its results fill in as the engine finishes its requests."""

    def __init__(self, n: int) -> None:
        self.out: list[dict[str, Any] | None] = [None] * n
        self.left = n
        self.future: Future[list[dict[str, Any]]] = Future()

    def finish(self, i: int, ro: Any) -> None:
        self._done(i, _result(ro))

    def reject(self, i: int, why: str) -> None:
        """vLLM refused request `i` before it ran: its result is the reason."""
        self._done(i, {"error": why})

    def _done(self, i: int, out: dict[str, Any]) -> None:
        self.out[i] = out
        self.left -= 1
        if self.left == 0:
            self.future.set_result(self.out)  # type: ignore[arg-type]


@dataclass
class _Slot:
    """One request of a `generate` call, as the engine loop sees it."""

    call: _Call
    index: int

    def update(self, ro: Any) -> None:
        if ro.finished:
            self.call.finish(self.index, ro)

    def fail(self, exc: BaseException | None) -> None:
        if not self.call.future.done():
            self.call.future.set_exception(exc or RuntimeError("request aborted"))


class _Stream:
    """A streamed request: each step's new text, then its result, then None."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[dict[str, Any] | BaseException | None] = queue.SimpleQueue()
        self.sent = 0

    def update(self, ro: Any) -> None:
        text = ro.outputs[0].text
        if len(text) > self.sent:
            self.events.put({"delta": text[self.sent :]})
            self.sent = len(text)
        if ro.finished:
            self.events.put({"result": _result(ro)})
            self.events.put(None)

    def fail(self, exc: BaseException | None) -> None:
        self.events.put(exc)  # None (an abort) ends the stream quietly


def _install_expert_counters(model: Any) -> None:
    """Hook every MoE block: a module with a `gate` and `experts` whose top-k is known
    (`experts.moe_config.experts_per_token` in vLLM's MoE runner, else `experts.top_k`)."""
    import torch

    counts: list[torch.Tensor | None] = []
    handles = []
    for mod in model.modules():
        gate, experts = getattr(mod, "gate", None), getattr(mod, "experts", None)
        cfg = getattr(experts, "moe_config", None)
        k = getattr(cfg, "experts_per_token", None) or getattr(experts, "top_k", None)
        if gate is None or not isinstance(k, int):
            continue
        counts.append(None)

        def hook(_m: Any, _inp: Any, out: Any, i: int = len(counts) - 1, k: int = k) -> None:
            logits = out[0] if isinstance(out, tuple) else out
            ids = logits.float().topk(k, dim=-1).indices.flatten()
            seen = torch.bincount(ids, minlength=logits.shape[-1]).cpu()
            counts[i] = seen if counts[i] is None else counts[i] + seen

        handles.append(gate.register_forward_hook(hook))
    model._conclave_expert_counts = (counts, handles)


def _remove_expert_counters(model: Any) -> list[list[int]]:
    counts, handles = model.__dict__.pop("_conclave_expert_counts", ([], []))
    for h in handles:
        h.remove()
    return [c.tolist() if c is not None else [] for c in counts]


def _cause(exc: BaseException) -> str:
    """The innermost error line of a Ray exception (its message holds a whole traceback)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    lines = [ln for ln in text if ln.strip() and not ln.startswith((" ", "Traceback"))]
    return lines[-1] if lines else type(exc).__name__


class VLLMBackend(ExpertBackend):
    """Hosts the expert's model in a vLLM engine inside a Ray actor."""

    continuous_batching = True

    #: How long to wait for the actor to be placed and the engine to start.
    load_timeout_s: float = 1800.0

    def __init__(self, config, service) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, service)
        assert isinstance(config.backend, VLLMBackendConfig)
        self.spec: VLLMBackendConfig = config.backend
        self._actor: Any = None
        self.load_info: dict[str, Any] = {}

    @property
    def actor_name(self) -> str:
        return f"expert:{self.name}"

    @property
    def loaded(self) -> bool:
        return self._actor is not None

    def engine_args(self) -> dict[str, Any]:
        args = dict(self.spec.engine_args)
        parallel = args.get("tensor_parallel_size", 1) * args.get("pipeline_parallel_size", 1)
        if self.spec.in_process and parallel == 1:
            args.setdefault("distributed_executor_backend", "uni")
        return args

    def runtime_env(self) -> dict[str, Any]:
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
        if self.engine_args().get("distributed_executor_backend") == "uni":
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        env["VLLM_CACHE_ROOT"] = os.environ.get("VLLM_CACHE_ROOT") or str(
            self.service.resolved_cache_dir() / "vllm"
        )
        env.update(self.spec.env)
        return {"env_vars": env}

    def actor_resources(self) -> dict[str, float]:
        res = self.config.resources
        return {"CPU": res.num_cpus, "GPU": res.num_gpus}

    def cluster_capacity(self) -> dict[str, float]:
        import ray

        total = ray.cluster_resources()
        return {"CPU": total.get("CPU", 0.0), "GPU": total.get("GPU", 0.0)}

    def _check_placeable(self) -> None:
        import ray

        res = self.config.resources
        total = ray.cluster_resources()
        for key, need in (("CPU", res.num_cpus), ("GPU", res.num_gpus)):
            if need > total.get(key, 0.0):
                raise ModelLoadError(
                    f"needs {need} {key} but the Ray cluster has {total.get(key, 0.0):g}; lower "
                    f"resources.num_{key.lower()}s or join a cluster that has them",
                    expert=self.name,
                )

    def prepare(self) -> None:
        # ray.init belongs on the main thread (it installs signal handlers); loads may not be.
        try:
            ensure_ray(self.cluster)
        except Exception as exc:
            where = self.cluster.address or os.environ.get("RAY_ADDRESS") or "a local cluster"
            raise ModelLoadError(
                f"cannot start or reach Ray ({where}): {exc}", expert=self.name
            ) from exc

    def load(self) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        ensure_ray(self.cluster)
        self._check_placeable()
        self._wait_name_free()
        res = self.config.resources
        host = ray.remote(EngineHost).options(
            name=self.actor_name,
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            runtime_env=self.runtime_env(),
            max_restarts=0,
            # callers wait in threads of their own while the engine's thread batches them
            max_concurrency=ENGINE_CALLS,
        )
        actor = host.remote(self.spec.model, self.spec.tokenizer, self.engine_args())
        try:
            self.load_info = ray.get(actor.info.remote(), timeout=self.load_timeout_s)
        except GetTimeoutError:
            ray.kill(actor)
            raise ModelLoadError(
                f"engine not ready after {self.load_timeout_s:.0f} s (not placed, or too slow)",
                expert=self.name,
            ) from None
        except (RayActorError, RayTaskError) as exc:
            ray.kill(actor)
            raise ModelLoadError(
                f"could not load {self.spec.model!r}: {_cause(exc)}", expert=self.name
            ) from None
        self._actor = actor
        log.info("%s ready in %.1f s", self.name, self.load_info.get("load_s", 0.0))

    def _payload(self, requests: list[GenerationRequest]) -> list[dict[str, Any]]:
        return [
            {
                "messages": [m.model_dump() for m in r.messages] if r.messages else None,
                "prompt": r.prompt,
                "sampling": self.config.sampling.merged(r.sampling).model_dump(),
            }
            for r in requests
        ]

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if self._actor is None:
            raise EngineDeadError("generate called on an unloaded expert", expert=self.name)
        try:
            outs = ray.get(self._actor.generate.remote(self._payload(requests)))
        except RayActorError as exc:  # the actor's process is gone
            self._actor = None
            raise EngineDeadError(f"engine died: {_cause(exc)}", expert=self.name) from None
        except RayTaskError as exc:
            # the engine itself failed (vLLM's refusals of single requests come back as
            # their results): its state is unknown, so start afresh
            self.unload()
            raise GenerationError(_cause(exc), expert=self.name) from None
        return [
            GenerationResult.failed(r, RequestRejectedError(o["error"], expert=self.name))
            if "error" in o
            else GenerationResult(item_id=r.item_id, expert=self.name, **o)
            for r, o in zip(requests, outs, strict=True)
        ]

    def stream(self, request: GenerationRequest) -> Iterator[str | GenerationResult]:
        """The answer's text as the engine generates it, then its result."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if self._actor is None:
            raise EngineDeadError("stream called on an unloaded expert", expert=self.name)
        stream_id = f"stream-{uuid.uuid4().hex}"
        actor = self._actor
        gen = actor.stream.options(num_returns="streaming").remote(
            self._payload([request])[0], stream_id
        )
        done = False
        try:
            for ref in gen:
                event = ray.get(ref)
                if "delta" in event:
                    yield event["delta"]
                elif "error" in event:
                    done = True  # never entered the engine
                    raise RequestRejectedError(event["error"], expert=self.name)
                else:
                    done = True
                    yield GenerationResult(
                        item_id=request.item_id, expert=self.name, **event["result"]
                    )
        except RayActorError as exc:
            self._actor = None
            raise EngineDeadError(f"engine died: {_cause(exc)}", expert=self.name) from None
        except RayTaskError as exc:  # the engine failed (refusals came as events): restart
            done = True
            self.unload()
            raise GenerationError(_cause(exc), expert=self.name) from None
        finally:
            if not done:  # the reader left (or failed): free the request's place
                with contextlib.suppress(Exception):
                    actor.abort.remote(stream_id)

    def expert_counts(self, requests: list[GenerationRequest]) -> list[list[int]]:
        """Tokens routed to each in-model expert, per MoE layer, answering `requests` as
        one batch (an MoE model; loaded)."""
        import ray

        if self._actor is None:
            raise EngineDeadError("expert_counts called on an unloaded expert", expert=self.name)
        return ray.get(self._actor.expert_counts.remote(self._payload(requests)))

    def unload(self) -> None:
        import ray

        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None
            self._wait_name_free()

    def _wait_name_free(self, timeout_s: float = 30.0) -> None:
        """Ray frees an actor's name only once it is dead; a new load reuses the name."""
        import ray

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                stale = ray.get_actor(self.actor_name, namespace=self.cluster.namespace)
            except ValueError:
                return
            ray.kill(stale)
            time.sleep(0.1)
