"""Python clients for a running Conclave gateway, sync and async, over httpx.

    from orchestrator.sdk import ConclaveClient
    with ConclaveClient("http://127.0.0.1:8000", api_key=None) as c:
        reply = c.chat("What is 2 + 2? The options are: (A) 4 (B) 5")
        reply.text, reply.trace          # the answer, and keywords / experts / aggregator
        c.route("...")                   # a RoutePlan, as Conclave.plan returns
        c.models()
        c.experts()                      # live status per expert (ExpertStatus)
        c.feedback(reply.id, correct=True)   # grade an answer: the free-agent monitor learns
        c.agents()                       # the monitor's agents and decisions

In process, the facade (`orchestrator.conclave.Conclave`) has `route` with the same
result type; the gateway's errors come back as `GatewayClientError` with the HTTP status
and OpenAI's error type, and no answer at all (nothing listening, a timeout) as
`GatewayUnreachableError`, naming the address. Bodies and responses follow the gateway's
own models (`orchestrator.protocol`), so client and server share one definition of the
wire format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
from pydantic import BaseModel, Field

from orchestrator.protocol import (
    ChatCompletion,
    FeedbackRequest,
    FeedbackResponse,
    ModelList,
    RouteRequest,
)
from orchestrator.types import RoutePlan
from workers.metrics import ExpertStatus


class ChatReply(BaseModel):
    """One chat completion: the text, token usage, and Conclave's routing trace."""

    id: str
    model: str
    text: str
    finish_reason: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    trace: dict[str, Any] | None = Field(None, description="keywords, experts, aggregator...")

    @classmethod
    def from_openai(cls, body: dict[str, Any]) -> ChatReply:
        """From the gateway's chat.completion JSON (`orchestrator.protocol.ChatCompletion`)."""
        completion = ChatCompletion.model_validate(body)
        choice = completion.choices[0]
        return cls(
            id=completion.id,
            model=completion.model,
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            usage=completion.usage.model_dump() if completion.usage else {},
            trace=completion.conclave,
        )


class GatewayClientError(Exception):
    """An error the gateway answered: its HTTP status, OpenAI error type and message."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message = status, type_, message


class GatewayUnreachableError(ConnectionError):
    """No answer from the gateway at all: nothing listening at the address, a timeout, a
    network failure. `retryable`: the same call may succeed once the gateway is up."""

    retryable = True


def _unreachable(exc: httpx.TransportError) -> GatewayUnreachableError:
    url = exc.request.url.copy_with(path="/", query=None)
    if isinstance(exc, httpx.TimeoutException):
        why = f"no answer within the timeout ({type(exc).__name__}): pass a longer `timeout`"
    else:
        why = f"{exc or type(exc).__name__}: is `conclave serve` running there?"
    return GatewayUnreachableError(f"cannot reach the Conclave gateway at {url} ({why})")


def _http_args(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"base_url {base_url!r}: give the gateway's address with its scheme, e.g. "
            "http://127.0.0.1:8000"
        )
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return {"base_url": base_url, "headers": headers, "timeout": timeout}


def _messages(question: str | list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}] if isinstance(question, str) else question


def _check(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            raise GatewayClientError(r.status_code, err.get("type", "error"), err["message"])
        except (ValueError, KeyError, TypeError):
            raise GatewayClientError(r.status_code, "error", r.text[:200]) from None
    try:
        return r.json()
    except ValueError:  # something else answers at that address
        raise GatewayClientError(
            r.status_code, "error", f"not a Conclave gateway's answer (not JSON): {r.text[:80]!r}"
        ) from None


def _statuses(body: dict[str, Any]) -> list[ExpertStatus]:
    return [ExpertStatus.model_validate(e) for e in body["data"]]


def _models(body: dict[str, Any]) -> list[str]:
    return [m.id for m in ModelList.model_validate(body).data]


# Bodies are built from the protocol's models without validating them here: the gateway
# validates, and its 422 names the field (a chat body stays a dict: OpenAI parameters the
# gateway ignores go through as given).
def _route_body(question: str) -> dict[str, Any]:
    return RouteRequest.model_construct(question=question).model_dump()


def _feedback_body(response_id: str, correct: bool, answer: str | None) -> dict[str, Any]:
    return FeedbackRequest.model_construct(
        id=response_id, correct=correct, answer=answer
    ).model_dump()


def _scored(body: dict[str, Any]) -> int:
    return FeedbackResponse.model_validate(body).agents_scored


class ConclaveClient:
    """Synchronous client."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        self._http = httpx.Client(**_http_args(base_url, api_key, timeout))

    def chat(
        self, question: str | list[dict[str, str]], model: str = "conclave", **params: Any
    ) -> ChatReply:
        body = {"model": model, "messages": _messages(question), **params}
        return ChatReply.from_openai(self._call("POST", "/v1/chat/completions", json=body))

    def route(self, question: str) -> RoutePlan:
        return RoutePlan.model_validate(self._call("POST", "/v1/route", json=_route_body(question)))

    def models(self) -> list[str]:
        return _models(self._call("GET", "/v1/models"))

    def experts(self) -> list[ExpertStatus]:
        return _statuses(self._call("GET", "/v1/experts"))

    def feedback(self, response_id: str, correct: bool, answer: str | None = None) -> int:
        """Grade an answer by its id (`ChatReply.id`), with the right answer if known;
        returns how many agents' answers it graded."""
        body = _feedback_body(response_id, correct, answer)
        return _scored(self._call("POST", "/v1/feedback", json=body))

    def agents(self, history: int = 50, offset: int | None = None) -> dict[str, Any]:
        """The free-agent monitor: agents with state and evidence, and decisions (the last
        `history`, or with `offset` a page of the whole audit log from its start)."""
        return self._call("GET", "/v1/agents", params=_page(history, offset))

    def audit(self, page: int = 500) -> Iterator[dict[str, Any]]:
        """Every decision of the audit log, oldest first, fetched a page at a time."""
        offset: int | None = 0
        while offset is not None:
            got = self.agents(history=page, offset=offset)
            yield from got["history"]
            offset = got["next_offset"]

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            return _check(self._http.request(method, path, **kw))
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncConclaveClient:
    """Asynchronous client with the same methods."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        self._http = httpx.AsyncClient(**_http_args(base_url, api_key, timeout))

    async def chat(
        self, question: str | list[dict[str, str]], model: str = "conclave", **params: Any
    ) -> ChatReply:
        body = {"model": model, "messages": _messages(question), **params}
        return ChatReply.from_openai(await self._call("POST", "/v1/chat/completions", json=body))

    async def route(self, question: str) -> RoutePlan:
        body = _route_body(question)
        return RoutePlan.model_validate(await self._call("POST", "/v1/route", json=body))

    async def models(self) -> list[str]:
        return _models(await self._call("GET", "/v1/models"))

    async def experts(self) -> list[ExpertStatus]:
        return _statuses(await self._call("GET", "/v1/experts"))

    async def feedback(self, response_id: str, correct: bool, answer: str | None = None) -> int:
        body = _feedback_body(response_id, correct, answer)
        return _scored(await self._call("POST", "/v1/feedback", json=body))

    async def agents(self, history: int = 50, offset: int | None = None) -> dict[str, Any]:
        return await self._call("GET", "/v1/agents", params=_page(history, offset))

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            return _check(await self._http.request(method, path, **kw))
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncConclaveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _page(history: int, offset: int | None) -> dict[str, int]:
    return {"history": history} | ({"offset": offset} if offset is not None else {})
