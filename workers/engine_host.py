"""What runs inside an expert's Ray actor: one vLLM engine and the thread that steps it.

`EngineHost` is the actor's body; `workers.vllm_backend.VLLMBackend` (the client side, in
the pool's process) creates it with `ray.remote(EngineHost)` and calls it. Ray pickles the
class by reference, so it lives here, at module level, where the actor's process imports
it by module path. This module imports neither Ray nor vLLM at import time: vLLM is
imported when the actor starts its engine.

The host keeps, per engine request, who waits for it: a `_Slot` of a `generate` call
(`_Call`) or a `_Stream`. A request vLLM refuses (too long, say) is answered with the
reason and the engine goes on (`_refusals`); any other engine failure fails every
caller, and the client restarts the actor.
"""

from __future__ import annotations

import difflib
import functools
import gc
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, cast

from workers.dtype import choose_here
from workers.moe_hooks import install_expert_counters, remove_expert_counters


@functools.cache
def _refusals() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it will not run (its client errors, and the
    ValueError/TypeError of its older validation); anything else is the engine's fault."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # vLLM not installed here, or a version without the split
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


def can_renice() -> bool:
    """Whether this process may lower its niceness again (root, or RLIMIT_NICE allows 0):
    only then does a restart load at a lower priority, so no engine is left niced."""
    if not hasattr(os, "setpriority"):
        return False
    if os.geteuid() == 0:
        return True
    import resource

    # an unprivileged process may set a niceness down to 20 - RLIMIT_NICE
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return soft == resource.RLIM_INFINITY or soft >= 20


def _renice_all(nice: int) -> None:
    """Every thread of this process to `nice` (on Linux a niceness is per thread)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except (ProcessLookupError, PermissionError):  # gone meanwhile, or not ours to change
            pass


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

    def __init__(
        self,
        model: str,
        tokenizer: str | None,
        engine_args: dict[str, Any],
        load_nice: int = 0,
        memory_limit: int | None = None,
    ) -> None:
        t0 = time.perf_counter()
        # A restart loads while the other experts serve: on a small CPU machine its imports
        # and warm-up took the cores from them (p99 of their requests 3-5x). Loading at a
        # lower priority (this thread, and the threads it starts, inherit it) lets serving
        # win. Only where the OS lets us go back (`can_renice`): no engine stays niced.
        load_nice = load_nice if load_nice and can_renice() else 0
        if load_nice:
            os.setpriority(os.PRIO_PROCESS, 0, load_nice)
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
        # float32 on a CPU without native bf16, where the config leaves the dtype to us
        chosen = choose_here(model, engine_args, memory_limit)
        self.llm = LLM(model=model, tokenizer=tokenizer, **chosen.engine_args)
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.dtype_why = chosen.why
        if load_nice:
            _renice_all(0)
        self.load_nice = load_nice
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
        return {
            "pid": os.getpid(),
            "load_s": self.load_s,
            "load_nice": self.load_nice,
            "dtype": self.dtype,
            "dtype_why": self.dtype_why,
        }

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
                for caller in self._running.values():
                    caller.fail(exc)
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
        self._on_engine(lambda: self.llm.apply_model(install_expert_counters))
        try:
            self.generate(items)
        finally:
            # apply_model answers once per worker: the first worker's counts
            counts: list[list[list[int]]] = self._on_engine(
                lambda: self.llm.apply_model(remove_expert_counters)
            )
        return counts[0]


def _result(ro: Any) -> dict[str, Any]:
    """A finished vLLM request's output, as the fields of the client's GenerationResult."""
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
            # every slot is filled once none is left
            self.future.set_result(cast(list[dict[str, Any]], self.out))


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
