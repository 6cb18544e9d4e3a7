"""The gateway's wire format: the OpenAI subset it serves, and the facade's chat answer.

Shared by the gateway (`orchestrator.gateway`), which validates requests and builds
responses with these models, and the SDK (`orchestrator.sdk`), which parses responses
with them, so the two cannot drift apart. `ChatAnswer` is what the facade's chat
(`orchestrator.chat`) gives the gateway for one question of the routed ensemble.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---- requests -----------------------------------------------------------------------------


class ChatMessage(BaseModel):
    """One message of a chat; fields OpenAI has and Conclave does not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = Field(..., max_length=200_000)


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions: model 'conclave' or an expert's name."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    top_p: float | None = Field(None, gt=0.0, le=1.0)


class FeedbackRequest(BaseModel):
    """The body of POST /v1/feedback: a grade for one answer of model 'conclave'."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=200, description="A chat completion's id.")
    correct: bool = Field(..., description="Whether its answer was right.")
    answer: str | None = Field(
        None, max_length=200, description="The right answer (an option letter), if known."
    )


class RouteRequest(BaseModel):
    """The body of POST /v1/route: the question whose routing to explain."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., min_length=1, max_length=200_000)


# ---- responses ----------------------------------------------------------------------------


class CompletionUsage(BaseModel):
    """Tokens a completion cost; for the ensemble, over every call it made."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt: int, completion: int) -> CompletionUsage:
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


class AssistantMessage(BaseModel):
    """The answer's message."""

    role: Literal["assistant"] = "assistant"
    content: str | None = ""


class ChatChoice(BaseModel):
    """The one choice of a chat completion (Conclave always answers with one)."""

    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """OpenAI's chat.completion, plus `conclave`: how Conclave answered (the ensemble's
    keywords, skills, experts and aggregator, or the expert a passthrough went to)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    object: str = "chat.completion"
    created: int = 0
    model: str
    choices: list[ChatChoice] = Field(..., min_length=1)
    usage: CompletionUsage | None = None
    conclave: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON the gateway sends: `conclave` only when there is one."""
        return self.model_dump(exclude={"conclave"} if self.conclave is None else None)


class ModelCard(BaseModel):
    """One entry of GET /v1/models."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "conclave"


class ModelList(BaseModel):
    """GET /v1/models: the routed ensemble (when served) and every expert."""

    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


class FeedbackResponse(BaseModel):
    """POST /v1/feedback's answer: how many agents' answers the grade scored."""

    id: str
    agents_scored: int


# ---- the facade's chat answer -------------------------------------------------------------


class EnsembleTrace(BaseModel):
    """How the routed ensemble answered: the `conclave` block of its chat completion."""

    keywords: list[str] = Field(default_factory=list, description="The question's keywords.")
    skills: list[str] = Field(default_factory=list, description="Inventory skills they map to.")
    experts: list[str] = Field(default_factory=list, description="The experts that answered.")
    aggregator: str | None = Field(None, description="The aggregator used, or 'vote'.")
    choice: str | None = Field(None, description="The final letter, None when nothing parsed.")
    calls: int = Field(0, description="LLM calls for the question, keywords included.")


class ChatAnswer(BaseModel):
    """The routed ensemble's answer to one question, ready to send as a chat completion."""

    id: str = Field(..., description="The task id (a response id is 'chatcmpl-' + this).")
    text: str = Field(..., description="The answer's text.")
    finish_reason: str = "stop"
    usage: CompletionUsage = Field(..., description="Tokens over every call of the ensemble.")
    trace: EnsembleTrace

    @property
    def choice(self) -> str | None:
        """The final option letter, None when nothing parsed."""
        return self.trace.choice
