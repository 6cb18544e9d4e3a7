"""The one configuration schema: cluster placement and the expert pool.

Built in Python (`ConclaveConfig(...)`) or loaded from YAML (`load_config(path)`); both go
through the same pydantic models, which forbid unknown fields. `load_config` and
`parse_config` turn validation failures into a `ConfigError` naming each field, the value
given and what is allowed.

The same schema serves the embedded CPU default (tiny models, in-process vLLM engines on a
local Ray) and a GPU cluster (7-70B models, `tensor_parallel_size`, `num_gpus`, a Ray
address): only the values change.

An expert's `backend` is an extension point: its `type` names a config schema in
`BACKEND_CONFIGS` (the built-ins `vllm`, `remote`, `fake`, and any a plug-in registers
with `workers.backend.register_backend`). The config's `plugins` are imported before the
rest of it is validated, so what they register can be named in it.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, core_schema

from orchestrator.errors import ConfigError
from orchestrator.registry import Registry, import_plugins

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    EXPERT = "expert"
    AGGREGATOR = "aggregator"
    KEYWORDS = "keywords"


class Sampling(_Strict):
    """Sampling parameters; an expert's defaults, overridable per request."""

    temperature: float = Field(0.0, ge=0.0, le=5.0, description="Softmax temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=1_000_000, description="Most tokens to generate.")
    seed: int | None = Field(None, description="Per-request seed for reproducible sampling.")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation.")

    def merged(self, override: SamplingOverride | None) -> Sampling:
        """These defaults with the fields that `override` sets replaced."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class SamplingOverride(_Strict):
    """Per-request sampling; unset fields fall back to the expert's defaults."""

    temperature: float | None = Field(None, ge=0.0, le=5.0, description="Softmax temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="Most tokens to generate.")
    seed: int | None = Field(None, description="Per-request seed.")
    stop: list[str] | None = Field(None, description="Strings that end generation.")


class Resources(_Strict):
    """What an expert needs where it runs; Ray places it by these."""

    num_cpus: float = Field(
        0.25, gt=0.0, description="CPUs reserved for the engine's actor (fractional is fine)."
    )
    num_gpus: float = Field(
        0.0, ge=0.0, description="GPUs for the actor; set tensor_parallel_size to match."
    )
    memory_gb: float = Field(
        1.0,
        gt=0.0,
        description="Estimated resident memory (host RAM on CPU, GPU memory on GPU); the "
        "pool keeps models resident while their sum fits `pool.memory_budget_gb`.",
    )


class BackendConfig(_Strict):
    """What every expert backend's config has: its `type`, the name its backend and this
    schema are registered under. A plug-in's config subclasses it, with
    `type: Literal["<name>"] = "<name>"` and fields of its own, and registers it with
    `workers.backend.register_backend(name, backend_cls, config_cls)`."""

    type: str = Field(
        ...,
        min_length=1,
        description="The registered backend type: 'vllm', 'remote', 'fake', or one a "
        "plug-in (see `plugins`) registers.",
    )


class VLLMBackendConfig(BackendConfig):
    """A model served by a vLLM engine in the pool's own Ray actor."""

    type: Literal["vllm"] = Field("vllm", description="Runs vLLM inside a Ray actor.")
    model: str = Field(..., min_length=1, description="Local model folder or Hugging Face id.")
    tokenizer: str | None = Field(None, description="Tokenizer folder or id; default: the model's.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed through to vllm.LLM / EngineArgs: dtype, max_model_len, "
        "tensor_parallel_size, gpu_memory_utilization, kv_cache_memory_bytes, ...",
    )
    in_process: bool = Field(
        True,
        description="Run the engine in the actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0, "
        "executor 'uni'): starts ~8x faster on CPU. Ignored when tensor_parallel_size > 1.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the engine's actor."
    )

    @field_validator("engine_args")
    @classmethod
    def _engine_args_not_duplicated(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("model", "tokenizer"):
            if key in v:
                raise ValueError(f"set '{key}' on the backend, not inside engine_args")
        return v


class RemoteBackendConfig(BackendConfig):
    """A model behind an API, called through litellm."""

    type: Literal["remote"] = Field("remote", description="Calls a provider through litellm.")
    model: str = Field(
        ...,
        min_length=1,
        description="litellm model string: 'openai/<name>' or 'hosted_vllm/<name>' for an "
        "OpenAI-compatible URL (set api_base), or any provider, e.g. 'anthropic/<name>'.",
    )
    api_base: str | None = Field(None, description="Base URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (never the key)."
    )
    max_concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0.0, description="Per-request timeout in seconds.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries of a retryable failure.")
    backoff_s: float = Field(
        0.5, ge=0.0, description="First retry delay; doubles on each retry (with jitter)."
    )

    @field_validator("api_base")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class FakeBackendConfig(BackendConfig):
    """A model-free backend for tests and dry runs: answers by a fixed rule."""

    type: Literal["fake"] = Field("fake", description="No model: deterministic canned answers.")
    answer: str = Field(
        "{expert}: {prompt}", description="Answer template; {expert} and {prompt} are filled in."
    )
    load_s: float = Field(0.0, ge=0.0, description="Simulated load time in seconds.")
    fail_load: bool = Field(False, description="Loading always fails (a bad path).")
    generate_s: float = Field(0.0, ge=0.0, description="Simulated time per generate call.")
    max_prompt_chars: int | None = Field(
        None, ge=1, description="Longer prompts are refused, one by one (a context limit)."
    )
    die_on_calls: list[int] = Field(
        default_factory=list, description="Generate calls (0 = first) on which the engine dies."
    )
    answer_key: Path | None = Field(
        None,
        description="A dataset file (any format `conclave eval --data` reads) whose questions "
        "this fake knows: the template's {letter} is the gold option with chance `accuracy`, "
        "else a wrong one; {category} is the question's category.",
    )
    accuracy: float = Field(1.0, ge=0.0, le=1.0, description="Chance {letter} is right.")
    degrade_after: int | None = Field(
        None, ge=0, description="Fault injection: after this many requests, `degraded_accuracy`."
    )
    degraded_accuracy: float = Field(0.0, ge=0.0, le=1.0, description="Accuracy once degraded.")
    seed: int = Field(0, description="Seed of the right/wrong draws (per request, in order).")


#: Backend config schemas by `type`: what `pool.experts[].backend` validates with. The
#: built-ins are here, in the foundation; `workers.backend.register_backend` adds a
#: plug-in's schema together with its backend class.
BACKEND_CONFIGS: Registry[type[BackendConfig]] = Registry(
    "expert backend", "pool.experts[].backend.type"
)
BACKEND_CONFIGS.add("vllm", VLLMBackendConfig)
BACKEND_CONFIGS.add("remote", RemoteBackendConfig)
BACKEND_CONFIGS.add("fake", FakeBackendConfig)


def _relocated(err: ValidationError, *prefix: str | int) -> ValidationError:
    """`err`'s errors under `prefix`: a nested model's errors raised from a validator keep
    their field paths (pool.experts.0.backend.fake.anser), as pydantic's own unions do."""
    return ValidationError.from_exception_data(
        err.title,
        [
            InitErrorDetails(
                type=e["type"], loc=(*prefix, *e["loc"]), input=e["input"], ctx=e.get("ctx", {})
            )
            for e in err.errors()
        ],
    )


def _value_error(loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """A ValueError at `loc`, for validators whose failure belongs to a field below them."""
    return ValidationError.from_exception_data(
        "ConclaveConfig",
        [InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": message})],
    )


def _registered_backend(value: Any) -> Any:
    """Validate a backend's mapping with the schema its `type` is registered under; a
    config object built in Python (`VLLMBackendConfig(...)`) is taken as it is."""
    if isinstance(value, BackendConfig) or not isinstance(value, dict):
        return value  # a config object, or not a mapping (pydantic reports that)
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in BACKEND_CONFIGS:
        known = ", ".join(repr(n) for n in BACKEND_CONFIGS.names())
        what = "needs a `type`" if kind is None else f"type {kind!r} is not registered"
        raise ValueError(
            f"{what}; registered backend types: {known}. A plug-in's backend registers when "
            "its module is imported: list the module under `plugins` in the config"
        )
    try:
        return BACKEND_CONFIGS.get(kind).model_validate(value)
    except ValidationError as err:
        raise _relocated(err, kind) from None


class _RegisteredBackendSchema:
    """The JSON schema of an expert's `backend`: one of the registered backend configs,
    told apart by `type` (the built-ins, and the plug-ins imported so far)."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, _schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        choices: dict[str, CoreSchema] = {
            name: BACKEND_CONFIGS.get(name).__pydantic_core_schema__
            for name in BACKEND_CONFIGS.ordered()
        }
        return handler(core_schema.tagged_union_schema(choices, "type"))


class ExpertConfig(_Strict):
    """One model of the pool and what it may be used for."""

    name: str = Field(
        ..., pattern=NAME_PATTERN, description="Unique name; names the Ray actor on the dashboard."
    )
    backend: Annotated[SerializeAsAny[BackendConfig], _RegisteredBackendSchema()] = Field(
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
        return _registered_backend(v)


class ClusterConfig(_Strict):
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


class PoolConfig(_Strict):
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

    def expert(self, name: str) -> ExpertConfig:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)


KEYWORD_PROMPT = (
    "Question: {question}\n\n"
    "What are the core knowledge, subjects or skills needed to solve this problem? "
    "List 2-5 keywords separated by commas. Example keywords: psychology, virology, "
    "behavioral theory, microbiology, diplomacy, political science, property law, finance, "
    "business. Give only the keywords, no other words or explanation.\n\n"
    "Follow this format:\nKeywords: <keyword1>, <keyword2>, ..."
)


class KeywordSettings(_Strict):
    """How keywords are drawn and filtered (the paper's values are the defaults)."""

    prompt: str = Field(KEYWORD_PROMPT, description="Prompt; {question} is replaced.")
    samples: int = Field(5, ge=1, le=64, description="Samples drawn per question.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="Sampling temperature.")
    max_tokens: int = Field(64, ge=1, description="Most tokens per sample.")
    max_chars: int = Field(20, ge=1, description="Longer keywords are dropped.")
    min_samples: int = Field(
        2, ge=1, description="Keep a keyword found in at least this many samples (paper: 2)."
    )
    seed: int = Field(0, description="Base seed; sample i of a question uses seed + i.")


class RouterSettings(_Strict):
    """Recruitment parameters (the paper's values are the defaults)."""

    type: str = Field(
        "symbolic-moe",
        min_length=1,
        description="The registered router (skills.router.ROUTERS): 'symbolic-moe', the "
        "paper's S(m,q) x g(m) draw, or one a plug-in registers.",
    )
    k: int = Field(3, ge=1, le=64, description="Experts recruited per question.")
    temperature: float = Field(0.5, gt=0.0, description="T in g(m)^(1/T); lower is sharper.")
    replacement: bool = Field(
        True, description="Draw with replacement (the paper) or k distinct experts."
    )
    seed: int = Field(0, description="Seed of the draws.")


class RoutingConfig(_Strict):
    """How questions reach experts: keywords, recruitment and aggregation."""

    keywords: KeywordSettings = Field(
        default_factory=KeywordSettings, description="Keyword sampling and filtering."
    )
    keyword_expert: str | None = Field(
        None, description="Expert that extracts keywords; unset: the one with role 'keywords'."
    )
    router: RouterSettings = Field(default_factory=RouterSettings, description="Recruitment.")
    strategy: str = Field(
        "symbolic-moe",
        min_length=1,
        description="The registered strategy (orchestrator.strategies.STRATEGIES) the "
        "gateway's routed model 'conclave' answers with; evals name theirs with --strategy.",
    )
    aggregator: str = Field(
        "auto",
        description="'auto': the best of the vote and the aggregator experts on the "
        "aggregation benchmark; a registered aggregator (agents.aggregators.AGGREGATORS: "
        "'vote', the vote weighted by draws; 'weighted-vote', also by validation accuracy; "
        "or one a plug-in registers); or the name of an expert with role 'aggregator' "
        "(Mixture-of-Agents synthesis).",
    )
    embedder: Literal["all-MiniLM-L6-v2", "ngram"] = Field(
        "all-MiniLM-L6-v2",
        description="Keyword embeddings for the skill inventory: all-MiniLM-L6-v2 (the "
        "paper's), or 'ngram', hashed character trigrams with no model (tests, dry runs).",
    )


class GatewaySettings(_Strict):
    """How the gateway serves; from the config's `gateway` section or the CLI."""

    host: str = Field("127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(8000, ge=0, le=65535, description="Port.")
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted bearer keys; also $CONCLAVE_API_KEYS (comma-separated). "
        "None configured: no auth.",
    )
    batch_window_ms: float = Field(5.0, ge=0, le=5_000, description="Micro-batch window.")
    max_batch: int = Field(64, ge=1, description="Most requests in one batch.")
    max_queue: int = Field(256, ge=1, description="Waiting requests before 429.")
    max_body_bytes: int = Field(1_000_000, ge=1_024, description="Larger bodies get 413.")
    request_timeout_s: float = Field(300.0, gt=0, description="Longer waits get 504.")
    preload: bool = Field(
        True,
        description="Load the experts that fit side by side before serving, so first answers "
        "wait for no model load; the others load on demand.",
    )

    def keys(self) -> set[str]:
        env = os.environ.get("CONCLAVE_API_KEYS", "")
        return {k for k in self.api_keys if k} | {k.strip() for k in env.split(",") if k.strip()}


class RewardWeights(_Strict):
    """R = (a*accuracy + b*synergy + c*efficiency) / (weights of the known terms) - d*penalty.

    accuracy: 1 if right, when a gold answer or a user's feedback says so (else the term is
    left out); synergy: 1 if the agent's answer agreed with the final one; efficiency:
    1 - tokens / token_budget, floored at 0; penalty: 1 for an error, a timeout or an
    answer that does not parse. Without a penalty R lies in [0, 1]."""

    accuracy: float = Field(1.0, ge=0.0, description="a: weight of being right.")
    synergy: float = Field(0.25, ge=0.0, description="b: weight of agreeing with the final answer.")
    efficiency: float = Field(0.05, ge=0.0, description="c: weight of using few tokens.")
    penalty: float = Field(1.0, ge=0.0, description="d: cost of a failed or unparsable answer.")
    token_budget: int = Field(1024, ge=1, description="Tokens at which efficiency reaches 0.")


class FreeAgentSettings(_Strict):
    """The free-agent monitor (RLFA): score agents, release persistent underperformers,
    try a free agent in shadow mode, promote it on evidence."""

    enabled: bool = Field(
        False, description="Score agents and swap them (also on when `free_agents` names any)."
    )
    free_agents: list[str] = Field(
        default_factory=list,
        description="Experts that wait in the free-agent pool: never routed until promoted.",
    )
    weights: RewardWeights = Field(default_factory=RewardWeights, description="Reward terms.")
    window: int = Field(50, ge=1, description="Sliding window of rewards per agent.")
    min_samples: int = Field(50, ge=1, description="Rewards in the window before a release.")
    swap_rule: str = Field(
        "window-mean",
        min_length=1,
        description="The registered swap rule (agents.swap_rules.SWAP_RULES) deciding "
        "releases and probation verdicts: 'window-mean' (a window's mean reward under "
        "release_below releases; one-sided bounds decide probations), or a plug-in's.",
    )
    release_below: float = Field(
        0.85, description="Release an agent whose mean reward over the window is below this."
    )
    probes_per_task: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Validation questions (answers known) asked of each serving expert per "
        "task it serves, in the same batch, and of its challenger on probation: scored like "
        "tasks, never shown to users. Accuracy evidence when live traffic brings no gold "
        "answer or feedback; costs that many extra calls per task.",
    )
    probation_min: int = Field(30, ge=1, description="Shadow tasks before any verdict.")
    probation_max: int = Field(200, ge=1, description="Shadow tasks before a rejection.")
    promote_margin: float = Field(
        0.0, description="The challenger must beat the incumbent's mean reward by this."
    )
    confidence_z: float = Field(
        1.64, ge=0.0, description="z of the one-sided bound every verdict must clear."
    )
    audit_log: Path | None = Field(
        None, description="JSON-lines audit log; default <cache>/agents/audit.jsonl."
    )

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.free_agents)


class ConclaveConfig(_Strict):
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
                raise _value_error(("plugins", i), why, module) from None
        return data

    @model_validator(mode="after")
    def _free_agents_are_experts(self) -> ConclaveConfig:
        experts = [e.name for e in self.pool.experts if Role.EXPERT in e.roles]
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


def _describe(err: ValidationError) -> str:
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
        else:
            lines.append(f"{loc}: {msg} (got {e['input']!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_config(data: Any) -> ConclaveConfig:
    """Validate a mapping (from YAML or JSON) into a config, or raise a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"a config must be a mapping with a 'pool' key, got {type(data).__name__}"
        )
    try:
        return ConclaveConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def load_config(path: str | Path) -> ConclaveConfig:
    """Load and validate a YAML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
