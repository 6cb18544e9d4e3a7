"""The gateway's wire format: the OpenAI subset it serves, and the facade's chat answer.

Shared by the gateway (`orchestrator.gateway`), which validates requests and builds
responses with these models, and the SDK (`orchestrator.sdk`), which parses responses
with them, so the two cannot drift apart. `ChatAnswer` is what the facade's chat
(`orchestrator.chat`) gives the gateway for one question of the routed ensemble.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

# ---- requests -----------------------------------------------------------------------------


class TextPart(BaseModel):
    """A text content part (`{"type": "text", "text": ...}`); other kinds are refused."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str = Field(..., max_length=200_000)


class ChatMessage(BaseModel):
    """One message of a chat: text, or text content parts; an assistant turn may carry
    tool calls and no content. Fields OpenAI has and Conclave does not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = Field(None, max_length=200_000)
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="An assistant turn's tool calls (kept in the history, not run)."
    )

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role!r} message needs content")
        return self

    @property
    def text(self) -> str:
        """The message's text: its content parts joined by newlines; a tool-call turn's
        calls, as JSON, when it has no content."""
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return json.dumps(self.tool_calls)
        return "\n".join(p.text for p in self.content)


#: OpenAI parameters Conclave cannot honour: a request that sets one (to anything but its
#: neutral value) gets 400 naming it, rather than an answer that silently ignored it
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
}


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions: model 'conclave' or an expert's name. Types
    are strict (`stream: "yes"` is an error, not true); every sampling parameter is passed
    to the experts; one Conclave cannot honour is refused (`UNSUPPORTED`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(..., min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    stream: StrictBool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: StrictInt | None = Field(None, ge=1, le=32_768)
    max_completion_tokens: StrictInt | None = Field(
        None, ge=1, le=32_768, description="The newer name of max_tokens."
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: StrictInt | None = Field(
        None, description="Seeds the routed model's draws and the experts' sampling."
    )
    n: StrictInt = Field(1, ge=1, description="Choices to return: 1, the only value served.")

    def unsupported(self) -> tuple[str, Any] | None:
        """The first parameter set that Conclave cannot honour (`UNSUPPORTED`, or `n`
        other than 1), with its value, if any: the gateway answers 400 naming it."""
        for name, neutral in UNSUPPORTED.items():
            if (value := (self.model_extra or {}).get(name)) not in neutral:
                return name, value
        return ("n", self.n) if self.n != 1 else None

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("'stop' takes at most 4 strings")
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ValueError("max_tokens and max_completion_tokens differ; send one of them")
        return self

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters the request set, as the experts take them."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        values = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens or self.max_completion_tokens,
            "seed": self.seed,
            "stop": stop,
        }
        return {k: v for k, v in values.items() if v is not None}


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

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        # as the chat route refuses a blank question: the keyword model would otherwise
        # invent skills for nothing, and the plan would look like an answer
        if not v.strip():
            raise ValueError("is blank: give the question to route")
        return v


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
    confidence: float | None = Field(
        None,
        description="The chance the answer is right, as the routing estimates it (None "
        "when the strategy does not estimate; low when the question was out of scope).",
    )
    out_of_scope: str | None = Field(
        None,
        description="Why the question is outside what the routed experts were profiled "
        "on, when it is: the fallback expert answered (routing.fallback).",
    )
    down: list[str] = Field(
        default_factory=list,
        description="Experts the router would have asked whose engine was down "
        "(restarting): the next best answered instead (routing.on_expert_down).",
    )


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
