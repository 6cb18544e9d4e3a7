"""Scripted experts: an OpenAI-compatible test server whose "models" answer the shared
MMLU-Pro questions right with a set accuracy per category, for `conclave bench routing`.

The server knows the questions (validation and test `Item`s) and finds the one a prompt
contains: the expert prompt (`orchestrator.prompts.messages_for`), the keyword prompt
(`KEYWORD_PROMPT`) and the Mixture-of-Agents synthesis prompt all inline it. Each
request's `model` names a scripted expert; whether its answer is right is a draw from an
RNG keyed by (bench seed, expert, question, sample), where the sample is the request's
`seed` when `temperature` > 0 and 0 otherwise: greedy answers repeat exactly, sampled
ones vary per seed, and no answer depends on the order or batch requests come in.

The keyword model (`kw`) names 2-3 keywords of the question's category (`KEYWORDS`), or of
another category for a pool's `keyword_error` share of questions. The aggregator (`agg`)
answers a synthesis prompt on its own with accuracy 0.5, ignoring the answers it is shown,
as a real LLM that overrides them would.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.answers import options_of
from orchestrator.errors import ConfigError
from orchestrator.types import Item

#: the keyword model's vocabulary per MMLU-Pro category (each keyword <= 20 characters)
KEYWORDS: dict[str, tuple[str, ...]] = {
    "biology": ("biology", "genetics", "cell biology", "evolution"),
    "business": ("business", "accounting", "management", "marketing"),
    "chemistry": ("chemistry", "stoichiometry", "organic chemistry", "reactions"),
    "computer science": ("computer science", "algorithms", "programming", "data structures"),
    "economics": ("economics", "macroeconomics", "microeconomics", "markets"),
    "engineering": ("engineering", "circuits", "thermodynamics", "materials"),
    "health": ("medicine", "anatomy", "physiology", "nutrition"),
    "history": ("history", "world history", "wars", "civilizations"),
    "law": ("law", "legal reasoning", "contracts", "torts"),
    "math": ("mathematics", "algebra", "calculus", "probability"),
    "other": ("general knowledge", "trivia", "culture", "common sense"),
    "philosophy": ("philosophy", "ethics", "logic", "metaphysics"),
    "physics": ("physics", "mechanics", "electromagnetism", "optics"),
    "psychology": ("psychology", "cognition", "behavior", "memory"),
}
CATEGORIES = tuple(KEYWORDS)
KEYWORD_MODEL = "kw"
AGGREGATOR = "agg"
AGGREGATOR_ACCURACY = 0.5
GARBAGE = "I am not sure."
Spec = TypeVar("Spec", bound=BaseModel)


class ScriptedExpert(BaseModel):
    """One scripted model: its accuracy per category and its faults."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]*$")
    accuracy: dict[str, float] = Field(
        default_factory=dict, description="Chance of a right answer per MMLU-Pro category."
    )
    default: float = Field(0.25, ge=0.0, le=1.0, description="Accuracy elsewhere.")
    garbage: float = Field(0.0, ge=0.0, le=1.0, description="Share of answers naming no option.")
    errors: float = Field(0.0, ge=0.0, le=1.0, description="Share of requests answered HTTP 500.")

    @field_validator("accuracy")
    @classmethod
    def _known_categories(cls, acc: dict[str, float]) -> dict[str, float]:
        # a misspelt category would silently get `default` instead
        for cat, a in acc.items():
            if cat not in KEYWORDS:
                raise ValueError(
                    f"{cat!r} is not an MMLU-Pro category; use one of {', '.join(CATEGORIES)}"
                )
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"{cat}: {a} is not an accuracy; give one from 0 to 1")
        return acc

    def accuracy_in(self, category: str | None) -> float:
        return self.accuracy.get(category or "", self.default)

    def expected_in(self, category: str | None) -> float:
        """The chance of a right answer there, garbage and failed calls counted wrong."""
        return self.accuracy_in(category) * (1 - self.garbage) * (1 - self.errors)


class ScriptedPool(BaseModel):
    """A pool of scripted experts, plus the keyword model and the aggregator every pool has."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    experts: list[ScriptedExpert]
    keyword_error: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of the keyword model's answers that name another category's "
        "keywords: of its calls (each sample errs on its own), or of the questions with "
        "`keyword_error_per_question` (every sample of such a question misleads alike).",
    )
    keyword_error_per_question: bool = Field(
        False, description="The keyword model's errors stick to questions, not to calls."
    )
    distractor: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Chance a wrong answer is the question's one shared distractor rather "
        "than a uniform wrong letter (so wrong answers can agree).",
    )

    @model_validator(mode="after")
    def _distinct_names(self) -> ScriptedPool:
        names = [e.name for e in self.experts]
        if not names:
            raise ValueError("experts: a pool needs at least one expert")
        for n in names:
            if names.count(n) > 1:
                raise ValueError(f"experts: two experts named {n!r}; rename one")
            if n in (KEYWORD_MODEL, AGGREGATOR):
                raise ValueError(
                    f"experts: {n!r} is the server's own keyword model or aggregator; "
                    "choose another name"
                )
        return self


def resolve_specs(
    given: Sequence[str | Spec],
    known: dict[str, Spec],
    name: Callable[[Spec], str],
    or_else: str = "",
) -> list[Spec]:
    """Pools by name (from `known`) or given whole (from a file), or a ConfigError naming
    the first unknown name and the known ones (and `or_else`, other names the caller
    takes), or a name two of them share."""
    unknown = [p for p in given if isinstance(p, str) and p not in known]
    if unknown:
        choices = ", ".join(known) + (f", or {or_else}" if or_else else "")
        raise ConfigError(f"unknown pool {unknown[0]!r}: choose from {choices}")
    specs = [known[p] if isinstance(p, str) else p for p in given]
    names = [name(s) for s in specs]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"two pools named {n!r} in one run: rename one")
    return specs


def load_spec(path: Path, model: type[Spec]) -> Spec:
    """A pool description (`ScriptedPool`, or a scenario built on one) from a YAML or JSON
    file, or a ConfigError naming the file, each bad field and what to do."""
    from orchestrator.config import describe_errors, read_yaml

    what = model.__name__
    data = read_yaml(path, what)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe_errors(e, what)}") from None


class Script:
    """What each scripted model answers: pure functions of (seed, model, question, sample)."""

    def __init__(self, pool: ScriptedPool, items: Sequence[Item], seed: int) -> None:
        self.pool, self.seed = pool, seed
        self.experts = {e.name: e for e in pool.experts}
        self.experts[AGGREGATOR] = ScriptedExpert(name=AGGREGATOR, default=AGGREGATOR_ACCURACY)
        self.by_text = {it.question: it for it in items}
        self.longest_first = sorted(self.by_text, key=len, reverse=True)

    def find(self, messages: Sequence[dict[str, Any]]) -> Item | None:
        """The known question the messages inline: an exact paragraph first (the prompts
        put it in one), else the longest known question found anywhere in the text."""
        text = "\n\n".join(str(m.get("content") or "") for m in messages)
        for part in text.split("\n\n"):
            hit = self.by_text.get(part.removeprefix("Question: "))
            if hit is not None:
                return hit
        return next((self.by_text[q] for q in self.longest_first if q in text), None)

    def _rng(self, *key: object) -> random.Random:
        return random.Random("|".join(map(str, (self.seed, *key))))

    def reply(self, model: str, item: Item, sample: int) -> str | None:
        """The model's answer text, or None for an HTTP 500."""
        if model == KEYWORD_MODEL:
            return self._keywords(item, sample)
        expert = self.experts[model]
        rng = self._rng(model, item.id, sample)
        if rng.random() < expert.errors:
            return None
        if rng.random() < expert.garbage:
            return GARBAGE
        letters = sorted(options_of(item.question)) or list("ABCD")
        gold = item.gold_answer or letters[0]
        if rng.random() < expert.accuracy_in(item.category):
            return f"The answer is ({gold})."
        wrong = [x for x in letters if x != gold] or [gold]
        distractor = self._rng("distractor", item.id).choice(wrong)
        letter = distractor if rng.random() < self.pool.distractor else rng.choice(wrong)
        return f"The answer is ({letter})."

    def right(self, model: str, item: Item, sample: int = 0) -> bool:
        """Whether `model`'s answer to `item` (its greedy one by default) is the gold one."""
        return self.reply(model, item, sample) == f"The answer is ({item.gold_answer})."

    def _keywords(self, item: Item, sample: int) -> str:
        category = item.category if item.category in KEYWORDS else "other"
        draw = () if self.pool.keyword_error_per_question else (sample,)
        if self._rng("keyword-error", item.id, *draw).random() < self.pool.keyword_error:
            others = [c for c in CATEGORIES if c != category]
            category = self._rng("keyword-category", item.id, *draw).choice(others)
        rng = self._rng(KEYWORD_MODEL, item.id, sample)
        words = rng.sample(KEYWORDS[category], rng.choice((2, 3)))
        return "Keywords: " + ", ".join(words)


def create_app(script: Script) -> FastAPI:
    """The FastAPI app: `POST /v1/chat/completions` and `GET /v1/models`."""
    app = FastAPI()
    models = [KEYWORD_MODEL, *script.experts]

    def error(status: int, message: str) -> JSONResponse:
        body = {"error": {"message": message, "type": "scripted", "code": status}}
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        model = str(body.get("model", ""))
        if model not in models:
            return error(404, f"model {model!r} not found; serving {models}")
        messages = body.get("messages") or []
        item = script.find(messages)
        if item is None:
            return error(400, "the prompt contains no question this server knows")
        temperature = float(body.get("temperature") or 0.0)
        sample = int(body.get("seed") or 0) if temperature > 0 else 0
        text = script.reply(model, item, sample)
        if text is None:
            return error(500, "scripted server error")
        prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4
        return {
            "id": f"chatcmpl-{item.id}-{sample}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 8, "total_tokens": prompt + 8},
        }

    return app


@contextmanager
def scripted_server(
    pool: ScriptedPool,
    items: Sequence[Item],
    seed: int,
    timeout_s: float = 30,
    script: Script | None = None,
) -> Iterator[str]:
    """Serve `pool`'s scripted models on 127.0.0.1 (a free port) in a daemon thread until
    the block ends; yields the base URL (`http://127.0.0.1:PORT/v1`). Pass `script` to
    change what a model answers while it serves (fault injection: replace one of its
    `experts`)."""
    import uvicorn

    from evals.bench.loopback import free_port

    port = free_port()
    config = uvicorn.Config(
        create_app(script or Script(pool, items, seed)),
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"scripted-{pool.name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigError(f"the scripted server did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
