"""Remote experts through litellm: an OpenAI-compatible URL or any litellm provider.

Each expert has its own concurrency limit, per-request timeout, and bounded retries with
exponential backoff for the retryable failures (timeouts, rate limits, 5xx, refused
connections). A request that still fails comes back as an error result; the others in the
group are unaffected.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.config import RemoteBackendConfig
from orchestrator.errors import (
    ConfigError,
    RateLimitedError,
    RemoteError,
    RemoteRequestError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)
from workers.backend import ExpertBackend
from workers.batch import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from orchestrator.config import ConclaveConfig, ExpertConfig

T = TypeVar("T")


def _litellm() -> Any:
    # litellm fetches a price map from the internet on import unless told not to.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    if verbose():
        litellm.suppress_debug_info = False
        return litellm
    # its own warnings (retries, its logging worker, cost lookups) are not the user's
    # business: our errors name what failed; `conclave --verbose` shows them
    litellm.suppress_debug_info = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return litellm


def verbose() -> bool:
    """`conclave --verbose` (CONCLAVE_VERBOSE=1): libraries' own logging left on."""
    return os.environ.get("CONCLAVE_VERBOSE", "") not in ("", "0")


class _Loop:
    """The process's one event loop for remote calls, in a daemon thread of its own.

    litellm binds async state (its logging worker, its HTTP clients) to the loop it first
    ran on. A new loop per batch (`asyncio.run`) made it print "LoggingWorker error:
    cannot reuse already awaited coroutine" tracebacks and "Task was destroyed but it is
    pending!" between the progress bars, though every call succeeded; one loop for the
    process keeps it quiet, and lets connections be reused across batches."""

    loop: asyncio.AbstractEventLoop | None = None
    lock = threading.Lock()

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls.lock:
            if cls.loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="remote-experts", daemon=True
                ).start()
                cls.loop = loop
                atexit.register(cls.stop)
            return cls.loop

    @classmethod
    def stop(cls) -> None:
        """At exit: let what is pending (litellm's logging tasks) end, then stop."""
        loop = cls.loop
        if loop is None or not loop.is_running():
            return

        async def drain() -> None:
            me = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not me]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - exiting anyway: nothing left to tell
            pass
        loop.call_soon_threadsafe(loop.stop)


def run_on_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the process's remote-call loop and wait for its result (from any
    thread but the loop's own)."""
    return asyncio.run_coroutine_threadsafe(coro, _Loop.get()).result()


def classify(exc: BaseException, expert: str) -> RemoteError:
    """Map a litellm/OpenAI exception onto our hierarchy (which says what is retryable)."""
    lm = _litellm()
    msg = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, (lm.Timeout, asyncio.TimeoutError, TimeoutError)):
        return RemoteTimeoutError(msg, expert=expert)
    if isinstance(exc, lm.RateLimitError):
        return RateLimitedError(msg, expert=expert)
    if isinstance(
        exc,
        (
            lm.APIConnectionError,
            lm.InternalServerError,
            lm.ServiceUnavailableError,
            lm.BadGatewayError,
        ),
    ):
        return RemoteUnavailableError(msg, expert=expert)
    return RemoteRequestError(msg, expert=expert)


class RemoteBackend(ExpertBackend):
    """Calls `litellm.acompletion` for each request, `max_concurrency` at a time."""

    resident = False

    def __init__(self, config: ExpertConfig, service: ConclaveConfig) -> None:
        super().__init__(config, service)
        assert isinstance(config.backend, RemoteBackendConfig)
        self.spec: RemoteBackendConfig = config.backend
        self._ready = False
        self._sem: asyncio.Semaphore | None = None

    @property
    def loaded(self) -> bool:
        return self._ready

    def _api_key(self) -> str | None:
        if self.spec.api_key_env is None:
            return None
        key = os.environ.get(self.spec.api_key_env)
        if not key:
            raise ConfigError(
                f"backend.api_key_env names {self.spec.api_key_env!r}, which is not set; "
                "export it with the provider's key",
                expert=self.name,
            )
        return key

    def load(self) -> None:
        self._api_key()  # fail early, naming the variable, when the key is missing
        _litellm()
        self._ready = True

    def unload(self) -> None:
        self._ready = False

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return run_on_loop(self._generate_all(requests))

    async def _generate_all(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self._sem is None:  # made on the loop, once: the limit holds across batches
            self._sem = asyncio.Semaphore(self.spec.max_concurrency)
        return list(await asyncio.gather(*(self._one(r, self._sem) for r in requests)))

    async def _one(self, req: GenerationRequest, sem: asyncio.Semaphore) -> GenerationResult:
        lm = _litellm()
        s = self.config.sampling.merged(req.sampling)
        messages = (
            [m.model_dump() for m in req.messages]
            if req.messages is not None
            else [{"role": "user", "content": req.prompt}]
        )
        kwargs: dict[str, Any] = {
            "model": self.spec.model,
            "messages": messages,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "timeout": self.spec.timeout_s,
            "num_retries": 0,  # retries are ours, so they follow our classification
        }
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if s.stop:
            kwargs["stop"] = s.stop
        if self.spec.api_base:
            kwargs["api_base"] = self.spec.api_base
        kwargs["api_key"] = self._api_key() or "none"
        attempts = 0
        while True:
            attempts += 1
            try:
                async with sem:
                    resp = await asyncio.wait_for(
                        lm.acompletion(**kwargs), timeout=self.spec.timeout_s + 5
                    )
                choice = resp.choices[0]
                usage = getattr(resp, "usage", None)
                return GenerationResult(
                    item_id=req.item_id,
                    expert=self.name,
                    text=choice.message.content or "",
                    finish_reason=choice.finish_reason,
                    prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                    completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                    attempts=attempts,
                )
            except Exception as exc:
                err = classify(exc, self.name)
                if not err.retryable or attempts > self.spec.max_retries:
                    return GenerationResult.failed(req, err, attempts=attempts)
                delay = self.spec.backoff_s * 2 ** (attempts - 1)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
