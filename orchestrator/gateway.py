"""`conclave serve`: an OpenAI-compatible REST gateway over the facade.

    POST /v1/chat/completions   model "conclave" (routed ensemble) or an expert's name
    GET  /v1/models             the ensemble and every expert
    GET  /v1/experts            live status per expert: loaded, requests, errors, latency
    GET  /v1/agents             the free-agent monitor: agents, rewards, decisions
    POST /v1/feedback           grade an answer by its response id
    POST /v1/route              explain a routing decision without generating
    GET  /healthz /readyz       liveness; readiness once the pool can serve
    GET  /metrics               Prometheus text (request-level view)

Concurrent requests are micro-batched: a request waits up to `batch_window_ms` for others,
then the batch goes to the facade (ensemble) or the pool (passthrough) in one call, so
vLLM batches them. The queue is bounded: beyond `max_queue` waiting requests the gateway
answers 429 with Retry-After. Every error is OpenAI's error JSON with the right status;
no input produces a 500. Streaming (`stream: true`) from a loaded vLLM expert sends the
answer token by token as its engine generates it (`ExpertPool.stream`); from the routed
ensemble or other engines, as OpenAI chunks once the batch it rode in has finished.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# module level: FastAPI resolves endpoint annotations (strings here) in this namespace
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.config import GatewaySettings, Role
from orchestrator.errors import ConclaveError, ConfigError, RequestRejectedError

ENSEMBLE = "conclave"


# ---- request and response schemas (the OpenAI subset we serve) ----------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = Field(..., max_length=200_000)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    top_p: float | None = Field(None, gt=0.0, le=1.0)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=200, description="A chat completion's id.")
    correct: bool = Field(..., description="Whether its answer was right.")
    answer: str | None = Field(
        None, max_length=200, description="The right answer (an option letter), if known."
    )


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., min_length=1, max_length=200_000)


class GatewayError(Exception):
    """An error with its HTTP status and OpenAI error type."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.retry_after = param, retry_after


# ---- micro-batching -----------------------------------------------------------------------


@dataclass
class _Job:
    key: str  # ENSEMBLE or an expert name: one batch per key
    request: ChatRequest
    future: asyncio.Future[dict[str, Any]]
    enqueued: float = field(default_factory=time.perf_counter)


#: Calls at once to an engine that batches continuously (each holds a gateway thread while
#: its requests generate; more requests than this go together in the next call).
CONTINUOUS_SLOTS = 32


class MicroBatcher:
    """Batches jobs per key and runs each batch in a worker thread with
    `run_batch(key, requests) -> outcomes`: each job's response, or the GatewayError that
    is its answer alone (a request its expert refused fails; its neighbours do not).

    A key whose engine batches only what it is given at once (remote APIs, the routed
    ensemble) runs one batch at a time: a job that finds it idle waits at most `window`
    seconds for company (or until `max_batch` jobs); jobs that arrive while it is busy
    queue and go together as the next batch, so under load batches grow by themselves and
    an idle key adds no more than the window.

    A key whose engine batches continuously (`continuous(key)`: a loaded vLLM engine adds
    new requests to its running batch at its next step) runs up to `CONTINUOUS_SLOTS`
    batches at a time: a job never waits for a running batch to finish, only for the
    window, which still gathers the requests that arrive together into one call.
    """

    def __init__(
        self,
        run_batch: Callable[[str, list[ChatRequest]], list[dict[str, Any] | GatewayError]],
        settings: GatewaySettings,
        continuous: Callable[[str], bool] = lambda _key: False,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.run_batch = run_batch
        self.settings = settings
        self.continuous = continuous
        self.waiting: dict[str, list[_Job]] = {}
        self.depth = 0  # jobs queued or running
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._busy: dict[str, set[asyncio.Task[None]]] = {}  # the running batches, per key
        #: where batches (and token streams) run: blocking calls into the pool
        self.threads = ThreadPoolExecutor(CONTINUOUS_SLOTS + 8, thread_name_prefix="gateway")
        self.closed = False

    def _full(self, key: str) -> bool:
        slots = CONTINUOUS_SLOTS if self.continuous(key) else 1
        return len(self._busy.get(key, ())) >= slots

    def admit(self) -> None:
        """Refuse new work while shutting down (503) or past `max_queue` (429)."""
        if self.closed:
            raise _shutting_down()
        if self.depth >= self.settings.max_queue:
            raise GatewayError(
                429,
                f"the gateway has {self.depth} requests waiting (max_queue); retry shortly",
                "rate_limit_error",
                "queue_full",
                retry_after=1,
            )

    async def submit(self, key: str, request: ChatRequest) -> dict[str, Any]:
        self.admit()
        loop = asyncio.get_running_loop()
        job = _Job(key, request, loop.create_future())
        self.depth += 1
        try:
            jobs = self.waiting.setdefault(key, [])
            jobs.append(job)
            if self._full(key):
                pass  # goes with the next batch, when a running one finishes
            elif len(jobs) >= self.settings.max_batch or self.settings.batch_window_ms == 0:
                self._flush(key)
            elif key not in self._timers:
                self._timers[key] = loop.call_later(
                    self.settings.batch_window_ms / 1000, self._flush, key
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
            self.depth -= 1

    def _flush(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if self._full(key):
            return
        jobs = self.waiting.pop(key, [])
        live = [j for j in jobs if not j.future.done()]  # callers gone: their work too
        batch, rest = live[: self.settings.max_batch], live[self.settings.max_batch :]
        if rest:
            self.waiting[key] = rest
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(key, batch))
            self._busy.setdefault(key, set()).add(task)
            task.add_done_callback(lambda t: self._next(key, t))

    def _next(self, key: str, done: asyncio.Task[None]) -> None:
        """A batch finished: the jobs that queued behind it go next, after the window,
        so that the callers it just answered can join them when they come straight back
        (a closed loop of clients otherwise splits into two half batches that take turns)."""
        busy = self._busy.get(key, set())
        busy.discard(done)
        if not busy:
            self._busy.pop(key, None)
        waiting = self.waiting.get(key)
        if not waiting:
            return
        if len(waiting) >= self.settings.max_batch or self.settings.batch_window_ms == 0:
            self._flush(key)
        elif key not in self._timers:
            self._timers[key] = asyncio.get_running_loop().call_later(
                self.settings.batch_window_ms / 1000, self._flush, key
            )

    async def _run(self, key: str, jobs: list[_Job]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.threads, self.run_batch, key, [j.request for j in jobs]
            )
        except Exception as exc:  # the whole batch failed: every caller hears why
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(_as_gateway_error(exc))
            return
        for j, res in zip(jobs, results, strict=True):
            if j.future.done():
                continue
            if isinstance(res, GatewayError):
                j.future.set_exception(res)
            else:
                j.future.set_result(res)

    async def drain(self) -> None:
        """Stop taking jobs; finish the ones already taken."""
        self.closed = True
        for key in list(self.waiting):
            self._flush(key)
        while self._busy or any(self.waiting.values()):
            running = [t for tasks in self._busy.values() for t in tasks]
            await asyncio.gather(*running, return_exceptions=True)
            await asyncio.sleep(0)  # let the done callbacks start the next batches


def _shutting_down() -> GatewayError:
    return GatewayError(
        503, "the gateway is shutting down", "service_unavailable", "shutting_down", retry_after=5
    )


def _as_gateway_error(exc: BaseException) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ConfigError):
        return GatewayError(400, str(exc))
    if isinstance(exc, ConclaveError):
        return GatewayError(
            503 if exc.retryable else 502, str(exc), "upstream_error", retry_after=5
        )
    return GatewayError(502, f"the experts failed: {type(exc).__name__}: {exc}", "upstream_error")


# ---- the application ----------------------------------------------------------------------


def _question(req: ChatRequest) -> str:
    users = [m.content for m in req.messages if m.role == "user"]
    if not users:
        raise GatewayError(400, "messages need at least one 'user' message", param="messages")
    return users[-1]


def create_app(  # type: ignore[no-untyped-def]
    conclave: Any, settings: GatewaySettings | None = None, ensemble: bool = True
):
    """The FastAPI app serving `conclave` (a `Conclave` facade with its pool). With
    `ensemble=False` it serves the experts by name only and is ready without a profile."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from orchestrator.gateway_metrics import GatewayMetrics

    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()
    experts = {e.name for e in conclave.config.pool.experts if Role.EXPERT in e.roles}

    def run_batch(key: str, requests: list[ChatRequest]) -> list[dict[str, Any] | GatewayError]:
        if key == ENSEMBLE:
            return _run_ensemble(conclave, requests)
        return _run_passthrough(conclave, key, requests)

    def continuous(key: str) -> bool:
        """A loaded engine that batches continuously (while loading, one batch at a time:
        a single load)."""
        backend = conclave.pool.backends.get(key)
        return bool(backend is not None and backend.continuous_batching and backend.loaded)

    batcher = MicroBatcher(run_batch, settings, continuous)
    served = [*([ENSEMBLE] if ensemble else []), *sorted(experts)]

    def check_routing() -> None:
        if not ensemble:
            raise GatewayError(
                404,
                "this gateway serves experts by name only (started with --passthrough-only)",
                "not_found_error",
                "routing_off",
            )
        if conclave.state is None:
            raise GatewayError(
                503, "no routing profile loaded yet", "service_unavailable", retry_after=5
            )

    keys = settings.keys()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.closed = False  # (re)started: take jobs
        # what exists by now lives as long as the server: out of the collector's sight, a
        # full collection no longer walks it mid-request (as vLLM does for its engine)
        gc.collect()
        gc.freeze()
        yield
        await batcher.drain()  # graceful: in-flight batches finish

    app = FastAPI(
        title="Conclave gateway",
        version="1",
        description="OpenAI-compatible chat completions over routed expert LLMs.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics

    def error_response(err: GatewayError) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
        body = {
            "error": {
                "message": err.message,
                "type": err.type,
                "param": err.param,
                "code": err.code,
            }
        }
        return JSONResponse(body, status_code=err.status, headers=headers)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_r: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error_response(GatewayError(400, "the body is not valid JSON"))
        first = errs[0] if errs else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{loc or 'body'}: {first.get('msg', 'invalid')}"
        return error_response(GatewayError(422, msg, param=loc or None, code="invalid_field"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(GatewayError(exc.status_code, str(exc.detail), type_))

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        return error_response(_as_gateway_error(exc))

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        path = request.url.path
        if path not in ("/healthz", "/readyz") and keys:
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if token not in keys:
                metrics.observe(path, 401, time.perf_counter() - t0)
                return error_response(
                    GatewayError(
                        401,
                        "missing or wrong API key: send 'Authorization: Bearer <key>'",
                        "authentication_error",
                        "invalid_api_key",
                    )
                )
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            metrics.observe(path, 413, time.perf_counter() - t0)
            return error_response(
                GatewayError(
                    413,
                    f"body of {length} bytes is over the {settings.max_body_bytes} limit",
                    code="body_too_large",
                )
            )
        response = await call_next(request)
        metrics.observe(path, response.status_code, time.perf_counter() - t0)
        return response

    limit = settings.max_body_bytes

    class BodyLimit:
        """A body sent without Content-Length (chunked) is read here first, up to the
        limit: past it the client gets the same 413 the header check gives; within it,
        the body is handed on as received."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            headers = dict(scope.get("headers") or [])
            if scope["type"] != "http" or b"content-length" in headers:
                return await self.inner(scope, receive, send)
            held: list[Any] = []
            seen = 0
            while True:
                msg = await receive()
                held.append(msg)
                if msg["type"] != "http.request":
                    break
                seen += len(msg.get("body", b""))
                if seen > limit:
                    metrics.observe(scope.get("path", ""), 413, 0.0)
                    err = GatewayError(
                        413, f"body is over the {limit} byte limit", code="body_too_large"
                    )
                    return await error_response(err)(scope, receive, send)
                if not msg.get("more_body"):
                    break

            async def replay() -> Any:
                return held.pop(0) if held else await receive()

            await self.inner(scope, replay, send)

    app.add_middleware(BodyLimit)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if batcher.closed:
            why = "shutting down"
        elif ensemble and conclave.state is None:
            why = "no routing profile loaded yet"
        else:
            why = "ready"
        ready = why == "ready"
        return JSONResponse({"ready": ready, "status": why}, status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        now = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": now, "owned_by": "conclave"} for n in served
            ],
        }

    @app.get("/v1/experts")
    async def expert_status() -> dict[str, Any]:
        """Live status of every expert in the pool (what `conclave experts list` shows)."""
        return {"object": "list", "data": [e.model_dump() for e in conclave.pool.status()]}

    def monitor() -> Any:
        if conclave.monitor is None:
            raise GatewayError(
                404,
                "the free-agent monitor is off: name free agents in the config's "
                "free_agents section (or set free_agents.enabled)",
                "not_found_error",
                "monitor_off",
            )
        return conclave.monitor

    @app.get("/v1/agents")
    async def agents(history: int = 50) -> dict[str, Any]:
        """The monitor's view: each agent's state and mean reward, and its last decisions."""
        mon = monitor()
        entries = mon.log.read()[-max(0, min(history, 10_000)) :] if history > 0 else []
        return {"agents": mon.status(), "history": [e.model_dump() for e in entries]}

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        """Grade an answer of model 'conclave' by its response id: the agents that took
        part earn an accuracy sample."""
        mon = monitor()
        try:
            scored = mon.feedback(body.id.removeprefix("chatcmpl-"), body.correct, body.answer)
        except KeyError:
            raise GatewayError(
                404,
                f"no recent answer with id {body.id!r}: feedback takes the id of a "
                "'conclave' chat completion, within its last 10,000 answers",
                "not_found_error",
                "unknown_response",
                param="id",
            ) from None
        return {"id": body.id, "agents_scored": scored}

    @app.post("/v1/route")
    async def route(body: RouteRequest) -> dict[str, Any]:
        check_routing()
        from orchestrator.types import Item

        decision = await asyncio.to_thread(
            lambda: conclave.route(
                [Item(id=f"route-{uuid.uuid4().hex[:8]}", question=body.question)]
            )[0]
        )
        return decision.model_dump(by_alias=True)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):  # type: ignore[no-untyped-def]
        if body.model not in served:
            raise GatewayError(
                404,
                f"unknown model {body.model!r}; GET /v1/models lists the models served: "
                + ", ".join(served),
                "not_found_error",
                "model_not_found",
                param="model",
            )
        if body.model == ENSEMBLE:
            _question(body)  # 400 before queueing
            check_routing()
        if body.stream and continuous(body.model):
            # token by token from the engine's running batch
            batcher.admit()
            return await _token_stream(conclave, body, batcher, metrics)
        result = await _unless_disconnected(request, batcher.submit(body.model, body))
        metrics.tokens(body.model, result["usage"]["total_tokens"])
        if body.stream:
            # an answer that comes in one piece (the routed ensemble votes on whole answers;
            # an expert still loading answers through its batch): the stream starts once it
            # is ready, so a failure is an HTTP status that clients retry on, as for a
            # request that does not stream, not an error event in a 200 stream
            return StreamingResponse(_sse(body.model, result), media_type="text/event-stream")
        return result

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(batcher.depth), media_type="text/plain")

    return app


async def _unless_disconnected(request: Request, work: Any) -> dict[str, Any]:
    """Await `work`, cancelling it if the client disconnects first (its queued job is
    then dropped before its batch runs)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise GatewayError(499, "the client closed the connection", code="client_closed")
    return task.result()


def _chunk_base(model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }


def _error_event(e: GatewayError) -> bytes:
    """An error after the status line has gone: OpenAI's error JSON as an event."""
    body = {"message": e.message, "type": e.type, "param": e.param, "code": e.code}
    return f"data: {json.dumps({'error': body})}\n\n".encode()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return f"data: {json.dumps(base | {'choices': [choice]})}\n\n".encode()


async def _sse(model: str, result: dict[str, Any]) -> AsyncIterator[bytes]:
    """A ready answer as OpenAI chat.completion.chunk events: the role, the text in
    pieces, the finish reason with usage, then [DONE]."""
    base = _chunk_base(model) | {"id": result["id"]}
    yield _chunk(base, {"role": "assistant", "content": ""})
    text = result["choices"][0]["message"]["content"] or ""
    for i in range(0, len(text), 32):
        yield _chunk(base, {"content": text[i : i + 32]})
    tail = base | {
        "choices": [
            {"index": 0, "delta": {}, "finish_reason": result["choices"][0]["finish_reason"]}
        ],
        "usage": result["usage"],
    }
    if "conclave" in result:
        tail["conclave"] = result["conclave"]
    yield f"data: {json.dumps(tail)}\n\n".encode()
    yield b"data: [DONE]\n\n"


async def _token_stream(
    conclave: Any, body: ChatRequest, batcher: MicroBatcher, metrics: Any
) -> StreamingResponse:
    """OpenAI chunks as the engine generates the answer (`pool.stream` in a worker thread,
    handing each piece to this loop). The response starts with the engine's first event,
    as vLLM's server does, so a request the engine refuses (too long) is a 400, not a
    stream that fails. A client that leaves stops the stream; the engine drops the request."""
    base = _chunk_base(body.model)
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[Any] = asyncio.Queue()
    left = threading.Event()
    request = _passthrough_request(body.model, body, base["id"])

    def produce() -> None:
        events = conclave.pool.stream(request)
        try:
            for event in events:
                loop.call_soon_threadsafe(pieces.put_nowait, event)
                if left.is_set():
                    break
        except Exception as exc:  # a bug below: still an error event, not a crash
            loop.call_soon_threadsafe(pieces.put_nowait, exc)
        finally:
            events.close()
            loop.call_soon_threadsafe(pieces.put_nowait, None)

    batcher.depth += 1
    try:
        loop.run_in_executor(batcher.threads, produce)
        first = await pieces.get()
    except BaseException:
        left.set()
        raise
    finally:
        batcher.depth -= 1  # the stream counts itself while it runs
    if getattr(first, "ok", True) is False:  # a failed result before any text
        err = _upstream_error(body.model, first)
        if err.status == 400:  # refused: nothing was sent yet, so a plain 400
            raise err
    sse = _token_sse(base, first, pieces, left, body.model, batcher, metrics)
    weakref.finalize(sse, left.set)  # a response never started still frees the engine
    return StreamingResponse(sse, media_type="text/event-stream")


async def _token_sse(
    base: dict[str, Any],
    first: Any,
    pieces: asyncio.Queue[Any],
    left: threading.Event,
    model: str,
    batcher: MicroBatcher,
    metrics: Any,
) -> AsyncIterator[bytes]:
    batcher.depth += 1
    try:
        yield _chunk(base, {"role": "assistant", "content": ""})
        event = first
        while isinstance(event, str):  # the text, piece by piece
            yield _chunk(base, {"content": event})
            event = await pieces.get()
        if event is None:
            return
        if isinstance(event, Exception):
            yield _error_event(_as_gateway_error(event))
            return
        if not event.ok:
            yield _error_event(_upstream_error(model, event))
            return
        usage = _usage(event.prompt_tokens, event.completion_tokens)
        metrics.tokens(model, usage["total_tokens"])
        choice = {"index": 0, "delta": {}, "finish_reason": event.finish_reason or "stop"}
        tail = base | {"choices": [choice], "usage": usage, "conclave": {"expert": model}}
        yield f"data: {json.dumps(tail)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        left.set()  # the producer stops at its next piece; the engine drops the request
        batcher.depth -= 1


def _completion(
    model: str,
    text: str,
    finish: str,
    prompt: int,
    completion: int,
    extra: dict[str, Any] | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"chatcmpl-{task or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": _usage(prompt, completion),
    }
    if extra:
        out["conclave"] = extra
    return out


def _passthrough_request(expert: str, r: ChatRequest, item_id: str) -> Any:
    from workers.batch import GenerationRequest, Message

    sampling = {
        k: v
        for k, v in (
            ("temperature", r.temperature),
            ("max_tokens", r.max_tokens),
            ("top_p", r.top_p),
        )
        if v is not None
    }
    msgs = [
        Message(
            role=m.role if m.role in ("system", "user", "assistant") else "user", content=m.content
        )
        for m in r.messages
    ]
    return GenerationRequest(
        item_id=item_id, expert=expert, messages=msgs, sampling=sampling or None
    )


def _upstream_error(expert: str, result: Any) -> GatewayError:
    err = result.error
    if err and err.type == RequestRejectedError.__name__:  # the client's request
        return GatewayError(400, f"expert {expert!r} refused the request: {err.message}")
    status = 504 if err and "Timeout" in err.type else 503 if err and err.retryable else 502
    why = err.message if err else "no result"
    return GatewayError(
        status,
        f"expert {expert!r} failed: {why}",
        "upstream_error",
        retry_after=5 if status == 503 else None,
    )


def _ensemble_failed(answers: list[Any]) -> GatewayError:
    """Every expert the router chose failed: 400 when they all refused the question (too
    long for their context), else 502 with each one's reason."""
    why = "; ".join(a.error for a in answers)  # each names its expert
    if all(a.error_type == RequestRejectedError.__name__ for a in answers):
        return GatewayError(400, f"the experts refused the question: {why}")
    return GatewayError(502, f"every expert the router chose failed: {why}", "upstream_error")


def _run_passthrough(
    conclave: Any, expert: str, requests: list[ChatRequest]
) -> list[dict[str, Any] | GatewayError]:
    reqs = [_passthrough_request(expert, r, str(i)) for i, r in enumerate(requests)]
    out: list[dict[str, Any] | GatewayError] = []
    for r in conclave.pool.run(reqs):
        if not r.ok:  # this request's answer alone
            out.append(_upstream_error(expert, r))
            continue
        out.append(
            _completion(
                expert,
                r.text or "",
                r.finish_reason or "stop",
                r.prompt_tokens,
                r.completion_tokens,
                {"expert": expert},
            )
        )
    return out


def _run_ensemble(
    conclave: Any, requests: list[ChatRequest]
) -> list[dict[str, Any] | GatewayError]:
    from orchestrator.types import Item

    items = [Item(id=f"req-{uuid.uuid4().hex[:12]}", question=_question(r)) for r in requests]
    traces = conclave.answer(items, "symbolic-moe")
    out: list[dict[str, Any] | GatewayError] = []
    for tr in traces:
        if tr.answers and all(a.error for a in tr.answers):  # nothing to vote on
            out.append(_ensemble_failed(tr.answers))
            continue
        text = tr.aggregator_text or next((a.text for a in tr.answers if a.text), "") or ""
        if tr.choice and tr.aggregator in (None, "vote"):
            text = f"The answer is ({tr.choice})."
        extra = {
            "keywords": tr.keywords,
            "skills": tr.routing.skills if tr.routing else [],
            "experts": [a.expert for a in tr.answers],
            "aggregator": tr.aggregator,
            "choice": tr.choice,
            "calls": tr.calls,
        }
        prompt = tr.tokens - tr.completion_tokens  # every call of the ensemble counts
        out.append(
            _completion(ENSEMBLE, text, "stop", prompt, tr.completion_tokens, extra, task=tr.id)
        )
    return out
