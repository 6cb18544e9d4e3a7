"""What goes into the pool and what comes out: one request per (item, expert) pair."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.config import SamplingOverride
from orchestrator.errors import ConclaveError


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"] = Field(..., description="Chat role.")
    content: str = Field(..., description="Message text.")


class GenerationRequest(BaseModel):
    """Ask one expert for one completion. Give `messages` (chat) or `prompt` (raw text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str = Field(..., min_length=1, description="Caller's id; echoed in the result.")
    expert: str = Field(..., min_length=1, description="Name of the expert in the pool.")
    messages: list[Message] | None = Field(None, description="Chat messages.")
    prompt: str | None = Field(None, description="Raw prompt for models without a chat template.")
    sampling: SamplingOverride | None = Field(None, description="Overrides the expert's defaults.")

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' is empty")
        return self

    def prompt_text(self) -> str:
        """The input as one string (for fakes, logs and remote providers without chat)."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        return "\n".join(m.content for m in self.messages)


class ErrorInfo(BaseModel):
    """A failure, as data: which error, whether retrying may help, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(..., description="Error class name from orchestrator.errors.")
    message: str = Field(..., description="What happened and what to do.")
    retryable: bool = Field(..., description="Whether the same request may succeed later.")

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, ConclaveError):
            return cls(type=type(exc).__name__, message=str(exc), retryable=exc.retryable)
        return cls(type=type(exc).__name__, message=str(exc) or repr(exc), retryable=False)


class GenerationResult(BaseModel):
    """One request's outcome: `text` on success, `error` on failure, never both."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(..., description="The request's item_id.")
    expert: str = Field(..., description="The expert that was asked.")
    text: str | None = Field(None, description="The completion.")
    error: ErrorInfo | None = Field(None, description="Why there is no completion.")
    finish_reason: str | None = Field(None, description="'stop', 'length', ...")
    prompt_tokens: int = Field(0, ge=0, description="Tokens in the prompt.")
    completion_tokens: int = Field(0, ge=0, description="Tokens generated.")
    attempts: int = Field(1, ge=1, description="Tries it took (engine restarts, remote retries).")

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(
        cls, req: GenerationRequest, exc: BaseException, attempts: int = 1
    ) -> GenerationResult:
        return cls(
            item_id=req.item_id, expert=req.expert, error=ErrorInfo.of(exc), attempts=attempts
        )
