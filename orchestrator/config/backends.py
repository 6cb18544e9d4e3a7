"""Expert backend configs, an extension point: an expert's `backend` mapping is validated
with the schema its `type` is registered under in `BACKEND_CONFIGS` (the built-ins
`vllm`, `remote`, `fake`, and any a plug-in registers with
`workers.backend.register_backend`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, core_schema

from orchestrator.config.base import (
    Strict,
)
from orchestrator.registry import Registry


class BackendConfig(Strict):
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


#: the dtypes vLLM's `dtype` engine argument takes (vLLM's `ModelDType`)
VLLM_DTYPES = ("auto", "bfloat16", "float16", "half", "float32", "float")


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

    def local_problems(self) -> list[str]:
        """What is wrong with the model and tokenizer on this machine: a local path (one
        that starts with '/', '.' or '~', or exists) that is missing, unreadable, or a
        folder without config.json. A Hugging Face id ('org/name', not a path here) is
        not checked: the engine's machine may reach a hub this one cannot."""
        problems = []
        for field, value in (("model", self.model), ("tokenizer", self.tokenizer)):
            if value is None:
                continue
            path = Path(value).expanduser()
            if not (value.startswith(("/", ".", "~")) or path.exists()):
                continue
            if not path.exists():
                problems.append(f"{field} {value!r} does not exist: give the model's folder")
            elif not os.access(path, os.R_OK):
                problems.append(f"{field} {value!r} cannot be read by this user")
            elif path.is_dir() and field == "model" and not (path / "config.json").is_file():
                problems.append(
                    f"model {value!r} has no config.json: give the folder a Hugging Face "
                    "model was saved to (save_pretrained), not its parent"
                )
        return problems

    @field_validator("engine_args")
    @classmethod
    def _engine_args_not_duplicated(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("model", "tokenizer"):
            if key in v:
                raise ValueError(f"set '{key}' on the backend, not inside engine_args")
        # checked here, not when the engine starts minutes later in its actor
        dtype = v.get("dtype", "auto")
        if not isinstance(dtype, str) or dtype.lower() not in VLLM_DTYPES:
            raise ValueError(
                f"engine_args.dtype {dtype!r} is not one vLLM knows: use one of "
                f"{', '.join(VLLM_DTYPES)} (or leave it out: on a CPU without native bf16 "
                "the engine then runs in float32, elsewhere as vLLM chooses)"
            )
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
        "{expert}: {prompt}",
        description="Answer template; {expert}, {prompt} and {sampling} (the request's "
        "sampling parameters as JSON) are filled in. Like an engine, the fake ends the text "
        "at a stop string and cuts it at max_tokens words.",
    )
    load_s: float = Field(0.0, ge=0.0, description="Simulated load time in seconds.")
    fail_load: bool = Field(False, description="Loading always fails (a bad path).")
    failed_loads: int = Field(
        0, ge=0, description="Fault injection: the first this many loads fail, then loads work."
    )
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


def relocated(err: ValidationError, *prefix: str | int) -> ValidationError:
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


def value_error(loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """A ValueError at `loc`, for validators whose failure belongs to a field below them."""
    return ValidationError.from_exception_data(
        "ConclaveConfig",
        [InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": message})],
    )


def registered_backend(value: Any) -> Any:
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
        raise relocated(err, kind) from None


class RegisteredBackendSchema:
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
