"""Python clients for a running Conclave gateway, sync and async, over httpx.

    from orchestrator.sdk import ConclaveClient
    with ConclaveClient("http://127.0.0.1:8000", api_key=None) as c:
        reply = c.chat("What is 2 + 2? The options are: (A) 4 (B) 5")
        reply.text, reply.trace          # the answer, and keywords / experts / aggregator
        c.route("...")                   # a RoutingDecision, as Conclave.route returns
        c.models()
        c.experts()                      # live status per expert (ExpertStatus)
        c.feedback(reply.id, correct=True)   # grade an answer: the free-agent monitor learns
        c.agents()                       # the monitor's agents and decisions

In process, the facade (`orchestrator.conclave.Conclave`) has `route` with the same
result type; the gateway's errors come back as `GatewayClientError` with the HTTP status
and OpenAI's error type.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, Field

from orchestrator.types import RoutingDecision
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
        choice = body["choices"][0]
        return cls(
            id=body["id"],
            model=body["model"],
            text=choice["message"]["content"] or "",
            finish_reason=choice.get("finish_reason"),
            usage=body.get("usage") or {},
            trace=body.get("conclave"),
        )


class GatewayClientError(Exception):
    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message = status, type_, message


def _http_args(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
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
    return r.json()


def _statuses(body: dict[str, Any]) -> list[ExpertStatus]:
    return [ExpertStatus.model_validate(e) for e in body["data"]]


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
        return ChatReply.from_openai(_check(self._http.post("/v1/chat/completions", json=body)))

    def route(self, question: str) -> RoutingDecision:
        return RoutingDecision.model_validate(
            _check(self._http.post("/v1/route", json={"question": question}))
        )

    def models(self) -> list[str]:
        return [m["id"] for m in _check(self._http.get("/v1/models"))["data"]]

    def experts(self) -> list[ExpertStatus]:
        return _statuses(_check(self._http.get("/v1/experts")))

    def feedback(self, response_id: str, correct: bool, answer: str | None = None) -> int:
        """Grade an answer by its id (`ChatReply.id`), with the right answer if known;
        returns how many agents' answers it graded."""
        body = {"id": response_id, "correct": correct, "answer": answer}
        return int(_check(self._http.post("/v1/feedback", json=body))["agents_scored"])

    def agents(self) -> dict[str, Any]:
        """The free-agent monitor: agents with state and mean reward, recent decisions."""
        return _check(self._http.get("/v1/agents"))

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
        r = await self._http.post("/v1/chat/completions", json=body)
        return ChatReply.from_openai(_check(r))

    async def route(self, question: str) -> RoutingDecision:
        r = await self._http.post("/v1/route", json={"question": question})
        return RoutingDecision.model_validate(_check(r))

    async def models(self) -> list[str]:
        return [m["id"] for m in _check(await self._http.get("/v1/models"))["data"]]

    async def experts(self) -> list[ExpertStatus]:
        return _statuses(_check(await self._http.get("/v1/experts")))

    async def feedback(self, response_id: str, correct: bool, answer: str | None = None) -> int:
        body = {"id": response_id, "correct": correct, "answer": answer}
        r = await self._http.post("/v1/feedback", json=body)
        return int(_check(r)["agents_scored"])

    async def agents(self) -> dict[str, Any]:
        return _check(await self._http.get("/v1/agents"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncConclaveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
