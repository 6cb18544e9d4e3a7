"""Batches of chat requests answered as OpenAI chat completions.

`run_batch` is what the micro-batcher calls in a worker thread: the routed ensemble's
batch goes to the facade's chat (`orchestrator.chat`), an expert's to the pool in one
`ExpertPool.run`. Either way each request gets its completion, or the `GatewayError`
that is its answer alone.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from orchestrator.answers import options_of
from orchestrator.gateway.batching import Deliver, Outcome, RunBatch
from orchestrator.gateway.deps import ENSEMBLE
from orchestrator.gateway.errors import GatewayError, ensemble_error, upstream_error
from orchestrator.protocol import (
    AssistantMessage,
    ChatAnswer,
    ChatChoice,
    ChatCompletion,
    ChatRequest,
    CompletionUsage,
)
from orchestrator.types import Item

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave
    from workers.batch import GenerationRequest


def question(req: ChatRequest) -> str:
    """What the routed ensemble answers: the last user message (400 without one, or when
    it is empty)."""
    users = [(i, m.text) for i, m in enumerate(req.messages) if m.role == "user"]
    if not users:
        raise GatewayError(
            400,
            "messages need at least one 'user' message: the routed model answers the last one",
            code="missing_question",
            param="messages",
        )
    i, text = users[-1]
    if not text.strip():
        raise GatewayError(
            400,
            f"messages[{i}].content is empty: the routed model answers the last 'user' "
            "message; put the question there",
            code="empty_question",
            param=f"messages[{i}].content",
        )
    return text


def completion(
    model: str,
    text: str,
    finish: str,
    usage: CompletionUsage,
    extra: dict[str, Any] | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """A chat.completion's JSON; `extra` is its "conclave" block, `task` the id's end."""
    return ChatCompletion(
        id=f"chatcmpl-{task or uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)],
        usage=usage,
        conclave=extra or None,
    ).to_json()


def passthrough_request(expert: str, r: ChatRequest, item_id: str) -> GenerationRequest:
    """`r` as the pool's request to `expert`: its messages (roles the engines do not know
    sent as 'user') and the sampling parameters it set."""
    from orchestrator.config import SamplingOverride
    from workers.batch import GenerationRequest, Message

    sampling = r.sampling()
    msgs = [
        Message(
            role=m.role if m.role in ("system", "user", "assistant") else "user", content=m.text
        )
        for m in r.messages
    ]
    return GenerationRequest(
        item_id=item_id,
        expert=expert,
        messages=msgs,
        sampling=SamplingOverride(**sampling) if sampling else None,
    )


def run_passthrough(conclave: Conclave, expert: str, requests: list[ChatRequest]) -> list[Outcome]:
    """The requests to one expert, in one pool batch."""
    reqs = [passthrough_request(expert, r, str(i)) for i, r in enumerate(requests)]
    out: list[Outcome] = []
    for r in conclave.pool.run(reqs):
        if not r.ok:  # this request's answer alone
            out.append(upstream_error(expert, r))
            continue
        usage = CompletionUsage.of(r.prompt_tokens, r.completion_tokens)
        text, finish = r.text or "", r.finish_reason or "stop"
        out.append(completion(expert, text, finish, usage, {"expert": expert}))
    return out


def ensemble_completion(answer: ChatAnswer) -> dict[str, Any]:
    """The routed ensemble's answer as a chat completion (its id is the task's)."""
    extra = answer.trace.model_dump()
    return completion(
        ENSEMBLE, answer.text, answer.finish_reason, answer.usage, extra, task=answer.id
    )


def route_key(question: str, seed: int | None) -> str:
    """The same question (and seed) is routed the same way, whatever its request id."""
    return hashlib.sha256(f"{seed}|{question}".encode()).hexdigest()[:16]


def ensemble_item(
    conclave: Conclave,
    question: str,
    seed: int | None = None,
    sampling: dict[str, Any] | None = None,
) -> Item:
    """A question for the routed model (chat or /v1/route): routed by its text and seed,
    not its request id; with no options it is free-form (asked as it is, not as a quiz),
    unless the profile's questions are integer problems."""
    st = conclave.state
    open_type = "integer" if st is not None and st.answer_type == "integer" else "text"
    return Item(
        id=f"req-{uuid.uuid4().hex[:12]}",
        question=question,
        answer_type="choice" if options_of(question) else open_type,
        route_key=route_key(question, seed),
        sampling=sampling or None,
    )


def run_ensemble(
    conclave: Conclave, requests: list[ChatRequest], deliver: Deliver | None = None
) -> list[Outcome]:
    """The requests to the routed ensemble, in one facade batch; a request whose question
    cannot be read is answered alone (400) and left out of the batch. `deliver(i,
    outcome)` hears request i's outcome as soon as its answer is final, before the
    batch's slower questions are (`Conclave.answer`)."""
    out: list[Outcome | None] = [None] * len(requests)
    items: list[tuple[int, Item]] = []
    for i, r in enumerate(requests):
        try:
            items.append((i, ensemble_item(conclave, question(r), r.seed, r.sampling())))
        except GatewayError as exc:
            out[i] = exc

    def outcome(a: ChatAnswer | Exception) -> Outcome:
        return ensemble_error(a) if isinstance(a, Exception) else ensemble_completion(a)

    def done(k: int, a: ChatAnswer | Exception) -> None:
        i = items[k][0]
        out[i] = res = outcome(a)
        if deliver is not None:
            deliver(i, res)

    answers = conclave.chat([it for _, it in items], done) if items else []
    for (i, _), a in zip(items, answers, strict=True):
        if out[i] is None:
            out[i] = outcome(a)
    return [o for o in out if o is not None]


def batch_runner(conclave: Conclave) -> RunBatch:
    """The micro-batcher's `run_batch` over `conclave`: one model's batch at a time."""

    def run_batch(
        key: str, requests: list[ChatRequest], deliver: Deliver | None = None
    ) -> list[Outcome]:
        if key == ENSEMBLE:
            return run_ensemble(conclave, requests, deliver)
        return run_passthrough(conclave, key, requests)

    return run_batch
