"""A backend with no model, for fast tests of the control plane and dry runs."""

from __future__ import annotations

import time

from orchestrator.config import FakeBackendConfig
from orchestrator.errors import EngineDeadError, ModelLoadError
from workers.backend import ExpertBackend
from workers.batch import GenerationRequest, GenerationResult


class FakeBackend(ExpertBackend):
    """Answers `answer.format(expert=..., prompt=...)`; can fail to load or die on cue.

    Counts its loads and generate calls so tests can check the pool's scheduling.
    """

    def __init__(self, config, cluster) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, cluster)
        assert isinstance(config.backend, FakeBackendConfig)
        self.spec: FakeBackendConfig = config.backend
        self._loaded = False
        self.loads = 0
        self.calls: list[list[str]] = []  # item ids per generate call

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        if self.spec.fail_load:
            raise ModelLoadError("model path does not exist (fake)", expert=self.name)
        time.sleep(self.spec.load_s)
        self.loads += 1
        self._loaded = True

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        assert self._loaded, "generate before load"
        call = len(self.calls)
        self.calls.append([r.item_id for r in requests])
        if self.spec.die_after is not None and call == self.spec.die_after:
            self._loaded = False
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
        self._loaded = False
