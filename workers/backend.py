"""The contract every expert backend fulfils, and the registry of backends by type.

Built-in backends (the `type` of an expert's `backend` config):
- `vllm`   -> `workers.vllm_backend:VLLMBackend`: a vLLM engine in a Ray actor of its own.
- `remote` -> `workers.remote:RemoteBackend`: an API reached through litellm.
- `fake`   -> `workers.fake:FakeBackend`: no model; for control-plane tests and dry runs.

A backend is two registered things under one name: its class here (`BACKENDS`) and its
config schema in the foundation (`orchestrator.config.BACKEND_CONFIGS`), which validates
an expert's `backend` mapping. `register_backend` adds both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

from orchestrator.config import BACKEND_CONFIGS, BackendConfig
from orchestrator.errors import ConfigError
from orchestrator.registry import Registry

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
    #: Whether it runs on Ray (its `prepare` connects this process to a cluster).
    uses_ray: bool = False

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

    @property
    def dtype(self) -> tuple[str, str] | None:
        """The loaded model's dtype and why it runs in it, where the backend knows it."""
        return None

    def prepare(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Called on the pool's own thread before `load` (which may run on another)."""

    @abstractmethod
    def load(self) -> None: ...

    def reload(self) -> None:
        """Load again after the engine died, while the other experts serve. By default
        `load`; a backend whose load competes with their serving for this machine's
        cores loads at a lower priority here."""
        self.load()

    @abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    @abstractmethod
    def unload(self) -> None:
        """Free the model, and stop a load under way in another thread (it then fails); a
        no-op when there is neither."""

    def stream(self, request: GenerationRequest) -> Iterator[str | GenerationResult]:
        """The answer's text in pieces as it is generated, then its result (which has the
        whole text). By default one piece: the whole answer, once generated."""
        (result,) = self.generate([request])
        if result.text:
            yield result.text
        yield result


#: Backend classes by `type`. Built-ins are lazy "module:attr" entries, so naming one
#: imports neither vLLM, Ray nor litellm until an expert of that type is built.
BACKENDS: Registry[type[ExpertBackend]] = Registry("expert backend", "pool.experts[].backend.type")
BACKENDS.add("vllm", "workers.vllm_backend:VLLMBackend")
BACKENDS.add("remote", "workers.remote:RemoteBackend")
BACKENDS.add("fake", "workers.fake:FakeBackend")


def register_backend(
    name: str,
    backend_cls: type[ExpertBackend] | str,
    config_cls: type[BackendConfig],
    *,
    replace: bool = False,
) -> None:
    """Make backend type `name` usable from YAML and Python: `backend_cls` (the class, or
    a lazy "module:attr") builds experts whose `backend.type` is `name`, and `config_cls`
    (a `BackendConfig` subclass whose `type` is `Literal[name]`) validates their
    `backend` mapping. Call it when the plug-in's module is imported, and list that module
    under the config's `plugins`. A name already registered is an error unless `replace`.
    """
    if not (isinstance(config_cls, type) and issubclass(config_cls, BackendConfig)):
        raise ConfigError(
            f"backend {name!r}: its config schema must subclass "
            f"orchestrator.config.BackendConfig, got {config_cls!r}"
        )
    default = config_cls.model_fields["type"].default
    if isinstance(default, str) and default != name:
        raise ConfigError(
            f"backend {name!r}: {config_cls.__name__}.type defaults to {default!r}; declare "
            f'`type: Literal["{name}"] = "{name}"` so configs of this backend validate'
        )
    # Both registries are checked before either changes, so a refusal leaves neither half-done.
    if not replace and (name in BACKENDS or name in BACKEND_CONFIGS):
        raise ConfigError(
            f"backend type {name!r} is already registered; pick another name, or pass "
            "replace=True to override it"
        )
    BACKENDS.add(name, backend_cls, replace=replace)
    BACKEND_CONFIGS.add(name, config_cls, replace=replace)


def backend_class(type_name: str) -> type[ExpertBackend]:
    """The backend class registered as `type_name` (imported now if registered lazily)."""
    return BACKENDS.get(type_name)


def make_backend(config: ExpertConfig, service: ConclaveConfig) -> ExpertBackend:
    return backend_class(config.backend.type)(config, service)
