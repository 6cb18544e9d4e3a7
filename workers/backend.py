"""The contract every expert backend fulfils, and the registry of backends by type.

Built-in backends (the `type` of an expert's `backend` config):
- `vllm`   -> `workers.vllm_backend:VLLMBackend`: a vLLM engine in a Ray actor of its own.
- `remote` -> `workers.remote:RemoteBackend`: an API reached through litellm.
- `fake`   -> `workers.fake:FakeBackend`: no model; for control-plane tests and dry runs.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config import ClusterConfig, ConclaveConfig, ExpertConfig
    from workers.batch import GenerationRequest, GenerationResult


class ExpertBackend(ABC):
    """One expert model. The pool calls `load` before `generate` and `unload` to free memory.

    `generate` answers a whole group in one call and returns one result per request, in
    order; a request that fails on its own comes back as a result with `error` set. It
    raises `EngineDeadError` when the engine itself died (the pool restarts it and retries
    once) and `ModelLoadError` from `load` when the model cannot be loaded.
    """

    #: Whether the model occupies memory while loaded (remote endpoints do not).
    resident: bool = True
    #: Whether concurrent `generate` calls share the engine's running batch (continuous
    #: batching), so a caller need not wait for the previous call to finish.
    continuous_batching: bool = False

    def __init__(self, config: ExpertConfig, service: ConclaveConfig) -> None:
        self.config = config
        self.service = service

    @property
    def cluster(self) -> ClusterConfig:
        return self.service.cluster

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def memory_gb(self) -> float:
        return self.config.resources.memory_gb if self.resident else 0.0

    def actor_resources(self) -> dict[str, float]:
        """Cluster resources the loaded model holds ("CPU", "GPU"); none by default."""
        return {}

    def cluster_capacity(self) -> dict[str, float]:
        """The totals those resources come from (after `prepare`)."""
        return {}

    @property
    @abstractmethod
    def loaded(self) -> bool: ...

    def prepare(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Called on the pool's own thread before `load` (which may run on another)."""

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    @abstractmethod
    def unload(self) -> None: ...

    def stream(self, request: GenerationRequest) -> Iterator[str | GenerationResult]:
        """The answer's text in pieces as it is generated, then its result (which has the
        whole text). By default one piece: the whole answer, once generated."""
        (result,) = self.generate([request])
        if result.text:
            yield result.text
        yield result


BACKENDS: dict[str, str] = {
    "vllm": "workers.vllm_backend:VLLMBackend",
    "remote": "workers.remote:RemoteBackend",
    "fake": "workers.fake:FakeBackend",
}


def register_backend(type_name: str, target: str) -> None:
    """Register a backend class as 'module:attr' under a new type name."""
    if type_name in BACKENDS:
        raise ConfigError(
            f"backend type {type_name!r} is already registered ({BACKENDS[type_name]})"
        )
    BACKENDS[type_name] = target


def backend_class(type_name: str) -> type[ExpertBackend]:
    try:
        target = BACKENDS[type_name]
    except KeyError:
        raise ConfigError(
            f"unknown backend type {type_name!r}; registered: {', '.join(sorted(BACKENDS))}"
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def make_backend(config: ExpertConfig, service: ConclaveConfig) -> ExpertBackend:
    return backend_class(config.backend.type)(config, service)
