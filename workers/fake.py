"""A backend with no model, for fast tests of the control plane and dry runs."""

from __future__ import annotations

import threading
import time

from orchestrator.config import FakeBackendConfig
from orchestrator.errors import EngineDeadError, ModelLoadError
from workers.backend import ExpertBackend
from workers.batch import GenerationRequest, GenerationResult

_ACTIVE = [0]
_ACTIVE_LOCK = threading.Lock()


class FakeBackend(ExpertBackend):
    """Answers `answer.format(expert=..., prompt=...)`; can fail to load or die on cue.

    `generate_s` makes each call take that long; `max_active` records how many of this
    backend's calls overlapped (its engine is single-batch, as a real one).

    Counts its loads and generate calls so tests can check the pool's scheduling.
    """

    def __init__(self, config, service) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, service)
        assert isinstance(config.backend, FakeBackendConfig)
        self.spec: FakeBackendConfig = config.backend
        self._loaded = False
        self.loads = 0
        self.calls: list[list[str]] = []  # item ids per generate call

    #: Most generate calls that overlapped across all fake backends (tests reset it).
    max_active = 0
    #: Fake models loaded now, and the most ever loaded at once.
    loaded_now: set[str] = set()
    max_loaded = 0

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        if self.spec.fail_load:
            raise ModelLoadError("model path does not exist (fake)", expert=self.name)
        time.sleep(self.spec.load_s)
        self.loads += 1
        self._loaded = True
        with _ACTIVE_LOCK:
            FakeBackend.loaded_now.add(self.name)
            FakeBackend.max_loaded = max(FakeBackend.max_loaded, len(FakeBackend.loaded_now))

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        assert self._loaded, "generate before load"
        with _ACTIVE_LOCK:
            _ACTIVE[0] += 1
            FakeBackend.max_active = max(FakeBackend.max_active, _ACTIVE[0])
        try:
            time.sleep(self.spec.generate_s)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE[0] -= 1
        call = len(self.calls)
        self.calls.append([r.item_id for r in requests])
        if call in self.spec.die_on_calls:
            self._unloaded()
            raise EngineDeadError("engine process exited (fake)", expert=self.name)
        return [
            GenerationResult(
                item_id=r.item_id,
                expert=self.name,
                text=self.spec.answer.format(expert=self.name, prompt=r.prompt_text()),
                finish_reason="stop",
            )
            for r in requests
        ]

    def unload(self) -> None:
        self._unloaded()

    def _unloaded(self) -> None:
        self._loaded = False
        with _ACTIVE_LOCK:
            FakeBackend.loaded_now.discard(self.name)
