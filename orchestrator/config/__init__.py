"""The one configuration schema: cluster placement, the expert pool, and how the service
routes, aggregates, serves and watches its agents.

Built in Python (`ConclaveConfig(...)`) or loaded from YAML (`load_config(path)`); both go
through the same pydantic models, which forbid unknown fields. `load_config` and
`parse_config` turn validation failures into a `ConfigError` naming each field, the value
given and what is allowed.

The same schema serves the embedded CPU default (tiny models, in-process vLLM engines on a
local Ray) and a GPU cluster (7-70B models, `tensor_parallel_size`, `num_gpus`, a Ray
address): only the values change.

Extensions are named by string and checked against their registries: an expert's
`backend.type` (`BACKEND_CONFIGS`, when the config is parsed), `routing.router.type`,
`routing.strategy`, `routing.aggregator` and `free_agents.swap_rule` (when a `Conclave` is
built). The config's `plugins` are imported before the rest of it is validated, so what
they register can be named in it.

    base.py      the strict base model, roles, sampling, resources
    backends.py  backend configs and their registry
    settings.py  keywords, router, routing, gateway, free agents
    schema.py    ConclaveConfig, parse_config, load_config, read_yaml
"""

from orchestrator.config.backends import (
    BACKEND_CONFIGS,
    BackendConfig,
    FakeBackendConfig,
    RemoteBackendConfig,
    VLLMBackendConfig,
)
from orchestrator.config.base import (
    NAME_PATTERN,
    Resources,
    Role,
    Sampling,
    SamplingOverride,
    Strict,
)
from orchestrator.config.schema import (
    AUDIT_LOG,
    ClusterConfig,
    ConclaveConfig,
    ExpertConfig,
    PoolConfig,
    default_cache_dir,
    describe_errors,
    load_config,
    parse_config,
    read_yaml,
)
from orchestrator.config.settings import (
    KEYWORD_PROMPT,
    FreeAgentSettings,
    GatewaySettings,
    KeywordSettings,
    RewardWeights,
    RouterSettings,
    RoutingConfig,
)

__all__ = [
    "NAME_PATTERN",
    "Role",
    "Sampling",
    "SamplingOverride",
    "Resources",
    "Strict",
    "BackendConfig",
    "VLLMBackendConfig",
    "RemoteBackendConfig",
    "FakeBackendConfig",
    "BACKEND_CONFIGS",
    "KEYWORD_PROMPT",
    "KeywordSettings",
    "RouterSettings",
    "RoutingConfig",
    "GatewaySettings",
    "RewardWeights",
    "FreeAgentSettings",
    "ExpertConfig",
    "ClusterConfig",
    "describe_errors",
    "PoolConfig",
    "ConclaveConfig",
    "AUDIT_LOG",
    "default_cache_dir",
    "parse_config",
    "read_yaml",
    "load_config",
]
