"""A backend with no model, for fast tests of the control plane and dry runs."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from typing import TYPE_CHECKING

from orchestrator.config import FakeBackendConfig
from orchestrator.errors import EngineDeadError, ModelLoadError, RequestRejectedError
from workers.backend import ExpertBackend
from workers.batch import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from collections.abc import Iterator

    from orchestrator.config import ConclaveConfig, ExpertConfig
    from orchestrator.types import Item

_ACTIVE = [0]
_ACTIVE_LOCK = threading.Lock()


class FakeBackend(ExpertBackend):
    """Answers `answer.format(expert=..., prompt=...)`; can fail to load or die on cue,
    and refuses prompts over `max_prompt_chars` one by one, as an engine's context limit.

    With an `answer_key` it knows the gold answers of a dataset and answers right with a
    set accuracy, which can drop after a number of requests (fault injection).

    `generate_s` makes each call take that long; `max_active` records how many of this
    backend's calls overlapped (its engine is single-batch, as a real one).

    Counts its loads and generate calls so tests can check the pool's scheduling.
    """

    def __init__(self, config: ExpertConfig, service: ConclaveConfig) -> None:
        super().__init__(config, service)
        assert isinstance(config.backend, FakeBackendConfig)
        self.spec: FakeBackendConfig = config.backend
        self._loaded = False
        self.loads = 0
        self.load_tries = 0  # loads tried, failed ones too
        self.calls: list[list[str]] = []  # item ids per generate call, when it ends
        self.generating = 0  # calls running now (tests wait for a batch to be under way)
        self.answered = 0  # requests answered from the answer key (fault injection counts)
        self._key: list[Item] | None = None

    #: Most generate calls that overlapped across all fake backends (tests reset it).
    max_active = 0
    #: Fake models loaded now, and the most ever loaded at once.
    loaded_now: set[str] = set()
    max_loaded = 0

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        self.load_tries += 1
        if self.spec.fail_load or self.load_tries <= self.spec.failed_loads:
            raise ModelLoadError("model path does not exist (fake)", expert=self.name)
        time.sleep(self.spec.load_s)
        self.loads += 1
        self._loaded = True
        with _ACTIVE_LOCK:
            FakeBackend.loaded_now.add(self.name)
            FakeBackend.max_loaded = max(FakeBackend.max_loaded, len(FakeBackend.loaded_now))

    def _text(self, prompt: str, sampling: str = "{}") -> str:
        if self.spec.answer_key is None:
            return self.spec.answer.format(expert=self.name, prompt=prompt, sampling=sampling)
        from orchestrator.answers import options_of

        item = self._known(prompt)
        n, self.answered = self.answered, self.answered + 1
        if item is None:
            return "I do not know."
        degraded = self.spec.degrade_after is not None and n >= self.spec.degrade_after
        accuracy = self.spec.degraded_accuracy if degraded else self.spec.accuracy
        rng = random.Random(f"{self.spec.seed}|{self.name}|{n}")
        letter = item.gold_answer or "A"
        if rng.random() >= accuracy:
            wrong = sorted(set(options_of(item.question)) - {letter}) or ["Z"]
            letter = rng.choice(wrong)
        return self.spec.answer.format(
            expert=self.name,
            prompt=prompt,
            letter=letter,
            category=item.category or "",
            sampling=sampling,
        )

    def _known(self, prompt: str) -> Item | None:
        if self._key is None:
            from orchestrator.formats import load_file

            assert self.spec.answer_key is not None, "only a fake with an answer key knows"
            self._key = load_file(self.spec.answer_key)
        return next((it for it in self._key if it.question in prompt), None)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        assert self._loaded, "generate before load"
        with _ACTIVE_LOCK:
            _ACTIVE[0] += 1
            self.generating += 1
            FakeBackend.max_active = max(FakeBackend.max_active, _ACTIVE[0])
        try:
            time.sleep(self.spec.generate_s)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE[0] -= 1
                self.generating -= 1
        if not self._loaded:  # evicted under a running batch: its engine is gone
            raise EngineDeadError("the model was unloaded mid-batch (fake)", expert=self.name)
        call = len(self.calls)
        self.calls.append([r.item_id for r in requests])
        if call in self.spec.die_on_calls:
            self._unloaded()
            raise EngineDeadError("engine process exited (fake)", expert=self.name)
        return [self._answer(r) for r in requests]

    def _answer(self, r: GenerationRequest) -> GenerationResult:
        prompt, limit = r.prompt_text(), self.spec.max_prompt_chars
        if limit is not None and len(prompt) > limit:
            why = f"the prompt has {len(prompt)} characters; this model takes at most {limit}"
            return GenerationResult.failed(r, RequestRejectedError(why, expert=self.name))
        sp = r.sampling
        text = self._text(prompt, json.dumps(sp.model_dump(exclude_none=True) if sp else {}))
        finish = "stop"
        # as an engine would: a stop string ends the text, max_tokens (a word a token) cuts it
        for stop in (sp.stop or []) if sp else []:
            text = text.split(stop, 1)[0]
        words = text.split(" ")
        if sp is not None and sp.max_tokens is not None and len(words) > sp.max_tokens:
            text, finish = " ".join(words[: sp.max_tokens]), "length"
        return GenerationResult(
            item_id=r.item_id, expert=self.name, text=text, finish_reason=finish
        )

    def stream(self, request: GenerationRequest) -> Iterator[str | GenerationResult]:
        """The answer word by word (each with its trailing space), then its result: as an
        engine streams, though this one generates the whole answer first."""
        (result,) = self.generate([request])
        if result.ok and result.text:
            yield from re.findall(r"\S+\s*|\s+", result.text)
        yield result

    def unload(self) -> None:
        self._unloaded()

    def _unloaded(self) -> None:
        self._loaded = False
        with _ACTIVE_LOCK:
            FakeBackend.loaded_now.discard(self.name)
