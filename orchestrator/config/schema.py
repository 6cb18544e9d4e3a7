"""The top-level schema (`ConclaveConfig`: cluster, pool, routing, gateway, free agents)
and loading it from YAML or a mapping with errors that name field, value and fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.config.backends import (
    BackendConfig,
    RegisteredBackendSchema,
    registered_backend,
    value_error,
)
from orchestrator.config.base import (
    NAME_PATTERN,
    Resources,
    Role,
    Sampling,
    Strict,
)
from orchestrator.config.settings import FreeAgentSettings, GatewaySettings, RoutingConfig
from orchestrator.errors import ConfigError
from orchestrator.registry import import_plugins


class ExpertConfig(Strict):
    """One model of the pool and what it may be used for."""

    name: str = Field(
        ..., pattern=NAME_PATTERN, description="Unique name; names the Ray actor on the dashboard."
    )
    backend: Annotated[SerializeAsAny[BackendConfig], RegisteredBackendSchema()] = Field(
        ...,
        description="How the model is served: a mapping whose `type` names a registered "
        "backend (vllm, remote, fake, or a plug-in's), with that backend's fields.",
    )
    sampling: Sampling = Field(default_factory=Sampling, description="Default sampling.")
    resources: Resources = Field(default_factory=Resources, description="Placement and memory.")
    roles: list[Role] = Field(
        default_factory=lambda: [Role.EXPERT],
        min_length=1,
        description="Roles it may take: expert, aggregator, keywords (keyword extractor).",
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_by_type(cls, v: Any) -> Any:
        return registered_backend(v)


class ClusterConfig(Strict):
    """Where the pool's actors run."""

    address: str | None = Field(
        None,
        description="Ray address to join ('auto', 'ray://host:10001', ...). Unset: RAY_ADDRESS "
        "if set, else a local Ray started in this process.",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of a local Ray (default: all); ignored when joining."
    )
    namespace: str = Field("conclave", min_length=1, description="Ray namespace of the actors.")
    dashboard: bool = Field(True, description="Start the Ray dashboard with a local Ray.")
    dashboard_host: str = Field("127.0.0.1", description="Dashboard bind address.")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Dashboard port.")
    attach: str | None = Field(
        None,
        description="Share the experts of another job on this cluster (a `conclave serve`: "
        "its Ray job id, which it prints at start): use its loaded experts instead of "
        "loading them again. This job neither loads nor stops them; an expert that job has "
        "not loaded fails here. Unset: this job loads experts of its own.",
    )
    placement_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="How long an expert's actor may wait for a node with room for it (its "
        "resources); past it the expert's load fails naming what it needs and what is free.",
    )
    restart_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness of a dead engine's restart while it loads (0: none), so the "
        "experts still serving keep the CPU; back to normal once loaded. Applied where the "
        "engine's user may go back (root, or RLIMIT_NICE >= 20); elsewhere it loads as usual.",
    )


class PoolConfig(Strict):
    """The experts and how many of them may stay resident."""

    experts: list[ExpertConfig] = Field(..., min_length=1, description="The pool's models.")
    memory_budget_gb: float | None = Field(
        None,
        gt=0.0,
        description="Sum of resident experts' memory_gb allowed at once; past it the pool "
        "evicts the model needed least in the rest of the batch. Unset: no limit.",
    )
    max_parallel_groups: int = Field(
        4, ge=1, le=256, description="Expert groups generating at once (one per actor)."
    )
    down_hold_s: float = Field(
        30.0,
        ge=0.0,
        description="How long an expert that keeps failing counts as down (its model failed "
        "to load, or `down_after` requests in a row found its endpoint unreachable), doubled "
        "with each hold in a row (at most 10 minutes). Meanwhile the router plans past it at "
        "no cost (as past a restarting engine, routing.on_expert_down) and a request for it "
        "alone fails at once saying why; then the next requests try it again. 0: no holds.",
    )
    down_after: int = Field(
        10,
        ge=1,
        description="Requests in a row failing as unreachable (connection refused, 5xx, "
        "timeouts, after their retries) that hold an expert down for `down_hold_s`; after a "
        "hold, one more such failure holds it again.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> PoolConfig:
        seen: set[str] = set()
        for i, e in enumerate(self.experts):
            if e.name in seen:
                raise ValueError(
                    f"experts[{i}].name {e.name!r} is used twice; names must be unique"
                )
            seen.add(e.name)
        return self

    def with_role(self, role: Role) -> list[str]:
        """The names of the experts that may take `role`, in the pool's order."""
        return [e.name for e in self.experts if role in e.roles]

    def expert(self, name: str) -> ExpertConfig:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)


class ConclaveConfig(Strict):
    """Everything Conclave needs to run."""

    plugins: list[str] = Field(
        default_factory=list,
        description="Modules imported before the rest of the config is validated, so their "
        "registered backends, strategies, aggregators, routers, swap rules and dataset "
        "formats can be named in it (e.g. 'mypackage.conclave_plugin').",
    )
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray placement.")
    pool: PoolConfig = Field(..., description="The expert pool.")
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig, description="Keywords, recruitment, aggregation."
    )
    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings, description="`conclave serve`: the REST gateway."
    )
    free_agents: FreeAgentSettings = Field(
        default_factory=FreeAgentSettings,
        description="The free-agent monitor: rewards, releases, probation, promotion.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where built models and vLLM's caches go; default $CONCLAVE_CACHE, "
        "else $XDG_CACHE_HOME/conclave, else ~/.cache/conclave.",
    )

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or default_cache_dir()

    def audit_log_path(self) -> Path:
        """The free-agent monitor's audit log: `free_agents.audit_log`, else the cache's."""
        return self.free_agents.audit_log or self.resolved_cache_dir() / AUDIT_LOG

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        """Import `plugins` before any other field is validated: a backend type a plug-in
        registers is then known when the experts are."""
        plugins = data.get("plugins") if isinstance(data, dict) else None
        for i, module in enumerate(plugins if isinstance(plugins, list) else []):
            if not isinstance(module, str):
                continue  # not a module name: the field's own validation says so
            try:
                import_plugins([module])
            except ConfigError as exc:
                why = str(exc).removeprefix("plugins: ")
                raise value_error(("plugins", i), why, module) from None
        return data

    @model_validator(mode="after")
    def _fallback_is_an_expert(self) -> ConclaveConfig:
        name = self.routing.fallback
        names = [e.name for e in self.pool.experts]
        if name is not None and name not in names:
            raise ValueError(
                f"routing.fallback {name!r} is not an expert of the pool; name one of "
                f"{names} (a generalist), or leave it unset"
            )
        return self

    @model_validator(mode="after")
    def _free_agents_are_experts(self) -> ConclaveConfig:
        experts = self.pool.with_role(Role.EXPERT)
        for i, name in enumerate(self.free_agents.free_agents):
            if name not in experts:
                raise ValueError(
                    f"free_agents.free_agents[{i}] {name!r} is not an expert of the pool; "
                    f"free agents are experts (role 'expert') that wait to be promoted: "
                    f"one of {experts}"
                )
        if experts and set(experts) <= set(self.free_agents.free_agents):
            raise ValueError("free_agents.free_agents names every expert: none would serve")
        return self


#: The audit log's place under a cache folder, when the config names none.
AUDIT_LOG = Path("agents") / "audit.jsonl"


def default_cache_dir() -> Path:
    if env := os.environ.get("CONCLAVE_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "conclave"


def describe_errors(err: ValidationError, what: str = "configuration") -> str:
    """A pydantic error as lines naming each field, the value given and what to do."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(
                f"{loc}: unknown field (got {e['input']!r}); remove it or fix its spelling"
            )
        elif e["type"] == "missing":
            lines.append(f"{loc}: required field is missing")
        elif not e["loc"]:  # a check across fields: its message names them
            lines.append(f"{loc}: {msg}")
        else:
            lines.append(f"{loc}: {msg} (got {e['input']!r})")
    return f"invalid {what}:\n  " + "\n  ".join(lines)


def parse_config(data: Any) -> ConclaveConfig:
    """Validate a mapping (from YAML or JSON) into a config, or raise a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"a config must be a mapping with a 'pool' key, got {type(data).__name__}"
        )
    try:
        return ConclaveConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_errors(e)) from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The data in a YAML (or JSON) file, or a ConfigError naming the file and the fix:
    missing, a folder, not text (a binary file given by mistake), or not YAML."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(
            f"{what} file {str(p)!r} is a folder; give the path of a YAML or JSON file"
        )
    if not p.is_file():
        raise ConfigError(
            f"{what} file {str(p)!r} does not exist; give the path of a YAML or JSON file"
        )
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML or JSON: {e}") from None


def load_config(path: str | Path) -> ConclaveConfig:
    """Load and validate a YAML config file."""
    data = read_yaml(path, "config")
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
