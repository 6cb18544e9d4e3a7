"""Asking experts, the facade's lowest stage (`Conclave` inherits it): each (question,
expert) pair as one pool batch, greedy answers reused in evals, repeated draws of a
sampling expert seeded apart, and one answer's text streamed as its engine generates it.

`run` is where every pool batch of the facade goes: it is the one place that knows
whether this thread is streaming an answer (`chat_stream`) and whether the router may
ask another expert when one is restarting (`routed`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from orchestrator.config import ConclaveConfig, SamplingOverride
from orchestrator.types import ExpertAnswer, Item

if TYPE_CHECKING:
    from orchestrator.protocol import ChatAnswer
    from workers.batch import GenerationRequest, GenerationResult
    from workers.pool import ExpertPool


class Streaming(threading.local):
    """A thread's streamed answer (`chat_stream`): where pieces go, and what went."""

    sink: Callable[[str], None] | None = None
    sent: str = ""


class Asking:
    """The facade's asking stage; `Conclave` provides the pool, the chat and the state."""

    config: ConclaveConfig
    reuse_answers: bool
    _answers: dict[tuple[str, str, str], ExpertAnswer]
    _streaming: Streaming

    @property
    def pool(self) -> ExpertPool:
        raise NotImplementedError  # the facade's

    def chat(
        self,
        items: Sequence[Item],
        on_done: Callable[[int, ChatAnswer | Exception], None] | None = None,
    ) -> list[ChatAnswer | Exception]:
        raise NotImplementedError  # the facade's

    def run(
        self,
        requests: list[GenerationRequest],
        progress: bool = False,
        stream: bool = False,
        routed: bool = False,
    ) -> list[GenerationResult]:
        """The requests in one pool batch. With `stream`, while this thread streams an
        answer (`chat_stream`) and nothing was streamed yet, a lone request streams its
        text to the sink as its engine generates it: the answer's one call whose text is
        the final text (one expert alone, or the aggregator's synthesis). `routed`: the
        router can ask another expert, so a request to an expert whose engine is
        restarting fails at once unless `routing.on_expert_down` is 'wait'."""
        live = self._streaming
        wait = not routed or self.config.routing.on_expert_down == "wait"
        if not (stream and live.sink is not None and not live.sent and len(requests) == 1):
            return self.pool.run(requests, progress=progress, wait_for_restart=wait)
        result = None
        for event in self.pool.stream(requests[0]):
            if isinstance(event, str):
                live.sent += event
                live.sink(event)
            else:
                result = event
        assert result is not None, "a stream ends with its result"
        return [result]

    def chat_stream(self, item: Item, sink: Callable[[str], None]) -> ChatAnswer | Exception:
        """`chat` for one item, its text streamed to `sink` as it is generated where one
        call's text is the answer (the expert asked alone, the aggregator's synthesis).
        Returns the answer as `chat` does; its text starts with what was streamed, unless
        the answer moved on after a streamed call (the lone expert named no option, and
        more were asked)."""
        live = self._streaming
        live.sink, live.sent = sink, ""
        try:
            (out,) = self.chat([item])
        finally:
            live.sink = None
        return out

    def ask(
        self,
        pairs: Sequence[tuple[Item, str]],
        progress: bool = False,
        samples: Sequence[int] | None = None,
        stream: bool = False,
        routed: bool = False,
    ) -> list[ExpertAnswer]:
        """Each (item, expert) answered once, all in one pool batch. With `reuse_answers`,
        a greedy expert's answer to a question it already answered is reused (marked
        `cached`): the same prompt to the same greedy model gives the same text. `stream`
        and `routed`: see `run`.

        `samples` (one per pair) numbers repeated draws of one expert for one item: draw
        s > 0 of an expert that samples (temperature > 0) is asked with its own seed, so it
        is an independent sample at the expert's settings, as in the paper's code."""
        from orchestrator.answers import extract_answer
        from orchestrator.prompts import messages_for
        from workers.batch import GenerationRequest

        draws = list(samples) if samples is not None else [0] * len(pairs)
        keys = [(ex, it.answer_type, it.question) for it, ex in pairs]
        todo = [
            i
            for i, key in enumerate(keys)
            if draws[i]
            or key not in self._answers
            or not self._deterministic(key[0])
            or pairs[i][0].sampling
        ]
        reqs = [
            GenerationRequest(
                item_id=f"{pairs[i][0].id}|{pairs[i][1]}" + (f"#{draws[i]}" if draws[i] else ""),
                expert=pairs[i][1],
                messages=messages_for(pairs[i][0].question, pairs[i][0].answer_type),
                sampling=self._draw_sampling(pairs[i][0], pairs[i][1], draws[i]),
            )
            for i in todo
        ]
        fresh = {}
        for i, r in zip(todo, self.run(reqs, progress, stream, routed), strict=True):
            it, ex = pairs[i]
            fresh[i] = ExpertAnswer(
                expert=ex,
                text=r.text,
                choice=extract_answer(r.text, it.question, it.answer_type) if r.ok else None,
                error=None if r.ok else r.error.message if r.error else "failed",
                error_type=r.error.type if r.error else None,
                tokens=r.prompt_tokens + r.completion_tokens,
                completion_tokens=r.completion_tokens,
            )
            if r.ok and not draws[i] and self._deterministic(ex) and not it.sampling:
                self._answers[keys[i]] = fresh[i]
        return [
            fresh[i] if i in fresh else self._answers[key].model_copy(update={"cached": True})
            for i, key in enumerate(keys)
        ]

    def _temperature(self, expert: str) -> float | None:
        """The expert's sampling temperature; None for an unknown expert (the pool answers
        it with an error result)."""
        try:
            return self.config.pool.expert(expert).sampling.temperature
        except KeyError:
            return None

    def samples(self, expert: str) -> bool:
        """Whether the expert samples (temperature > 0): two draws are two answers."""
        return (self._temperature(expert) or 0.0) > 0.0

    def _draw_sampling(self, item: Item, expert: str, draw: int) -> SamplingOverride | None:
        """Draw 0 runs at the expert's settings, or what the caller set (`Item.sampling`);
        a later draw of a sampling expert gets a seed of its own (the same for the same
        question, expert, draw and caller's seed)."""
        asked = dict(item.sampling or {})
        if draw and self.samples(expert):
            key = f"{item.route_key or item.id}|{expert}|{draw}|{asked.get('seed')}"
            digest = hashlib.sha256(key.encode()).digest()
            asked["seed"] = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
        return SamplingOverride(**asked) if asked else None

    def _deterministic(self, expert: str) -> bool:
        """Whether a greedy expert's earlier answer may be reused (`reuse_answers`)."""
        return self.reuse_answers and self._temperature(expert) == 0.0
