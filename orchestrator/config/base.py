"""The config's building blocks: the strict base model, roles, sampling and resources."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    EXPERT = "expert"
    AGGREGATOR = "aggregator"
    KEYWORDS = "keywords"


class Sampling(Strict):
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


class SamplingOverride(Strict):
    """Per-request sampling; unset fields fall back to the expert's defaults."""

    temperature: float | None = Field(None, ge=0.0, le=5.0, description="Softmax temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="Most tokens to generate.")
    seed: int | None = Field(None, description="Per-request seed.")
    stop: list[str] | None = Field(None, description="Strings that end generation.")


class Resources(Strict):
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
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources the actor needs, e.g. {'fast_disk': 1} for a node "
        "started with `ray start --resources '{\"fast_disk\": 4}'`.",
    )
    accelerator_type: str | None = Field(
        None,
        description="The GPU type to run on, as Ray names it (e.g. 'A100', 'H100'): the actor "
        "goes only to a node that has one.",
    )
    node_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the actor must run on (Ray's label selector), e.g. "
        "{'ray.io/availability-zone': 'us-east-1a'} or a label of `ray start --labels`.",
    )

    @field_validator("custom")
    @classmethod
    def _custom_amounts(cls, v: dict[str, float]) -> dict[str, float]:
        for key, amount in v.items():
            if key in ("CPU", "GPU", "memory") or amount <= 0:
                raise ValueError(
                    f"custom resource {key!r}: {amount!r}; give a positive amount of a custom "
                    "resource (CPU, GPU and memory have fields of their own)"
                )
        return v
