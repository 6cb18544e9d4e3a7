"""`conclave bench route`: how fast recruitment is, LLM calls excluded.

Times keyword mapping (nearest inventory skill), scoring (S, g, w) and selection for a
batch of questions whose keywords are given, the way `Conclave.answer` runs them after
the keyword stage. Warm: keywords repeat across questions, as on a benchmark, so most
mappings are cache hits. Cold: every keyword is new, so the batch's keywords are embedded
with all-MiniLM-L6-v2 (one encode call, as `Conclave.answer` does) and compared with the
whole inventory.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.config import RouterSettings
from skills.router import SkillRouter

if TYPE_CHECKING:
    from skills.inventory import Embedder

SUBJECTS = [
    "algebra",
    "geometry",
    "arithmetic",
    "calculus",
    "statistics",
    "probability",
    "physics",
    "chemistry",
    "biology",
    "genetics",
    "medicine",
    "anatomy",
    "law",
    "economics",
    "finance",
    "history",
    "geography",
    "philosophy",
    "psychology",
    "engineering",
    "computer science",
    "programming",
    "linguistics",
    "grammar",
    "spelling",
    "dates",
    "calendars",
    "units",
    "measurement",
    "astronomy",
]
QUALIFIERS = ["", "basic ", "advanced ", "applied ", "theoretical ", "modern "]


class WarmRouting(BaseModel):
    """Questions whose keywords repeat, so most mappings are cache hits."""

    model_config = ConfigDict(extra="forbid")

    questions: int
    seconds: float
    questions_per_s: float


class ColdRouting(BaseModel):
    """Questions whose keywords are all new: embedded in one batch, compared with all."""

    model_config = ConfigDict(extra="forbid")

    questions: int
    new_keywords: int
    seconds: float
    questions_per_s: float


class RoutingBenchResult(BaseModel):
    """`conclave bench route`: recruitment throughput, LLM calls excluded."""

    model_config = ConfigDict(extra="forbid")

    experts: int
    inventory_keywords: int
    inventory_build_s: float = Field(..., description="Embedding the inventory's keywords.")
    warm: WarmRouting
    cold: ColdRouting
    embedder: str


def run_routing_bench(
    questions: int = 20_000,
    experts: int = 16,
    keywords_per_question: int = 3,
    cold_questions: int = 500,
    embedder: Embedder | None = None,
    seed: int = 0,
) -> RoutingBenchResult:
    """Route `questions` warm and `cold_questions` cold over `experts` random profiles;
    `embedder` defaults to all-MiniLM-L6-v2."""
    from skills.inventory import MiniLMEmbedder, SkillInventory

    rng = random.Random(seed)
    embedder = embedder or MiniLMEmbedder()
    vocab = [q + s for s in SUBJECTS for q in QUALIFIERS]  # 180 inventory keywords
    t0 = time.perf_counter()
    inventory = SkillInventory.build(vocab, embedder)
    build_s = time.perf_counter() - t0
    profiles = {
        f"expert-{i}": {kw: rng.randint(-20, 20) for kw in rng.sample(vocab, 60)}
        for i in range(experts)
    }
    router = SkillRouter(profiles, RouterSettings())
    # keywords as a keyword model writes them: inventory words, and variants of them
    spoken = vocab + [f"{kw} problems" for kw in vocab] + [f"{kw}s" for kw in SUBJECTS]
    warm = [rng.sample(spoken, keywords_per_question) for _ in range(questions)]
    inventory.map(sorted({k for kws in warm for k in kws}))  # the cache a benchmark fills

    def route(batch: list[list[str]], tag: str) -> float:
        t = time.perf_counter()
        inventory.map(sorted({k for kws in batch for k in kws}))  # one embedding batch
        for i, kws in enumerate(batch):
            router.select(f"{tag}{i}", inventory.map(kws), keywords=kws)
        return time.perf_counter() - t

    warm_s = route(warm, "w")
    cold = [
        [f"{rng.choice(SUBJECTS)} topic {i}-{j}" for j in range(keywords_per_question)]
        for i in range(cold_questions)
    ]
    cold_s = route(cold, "c")
    return RoutingBenchResult(
        experts=experts,
        inventory_keywords=len(inventory),
        inventory_build_s=round(build_s, 3),
        warm=WarmRouting(
            questions=questions,
            seconds=round(warm_s, 4),
            questions_per_s=round(questions / warm_s, 1),
        ),
        cold=ColdRouting(
            questions=cold_questions,
            new_keywords=cold_questions * keywords_per_question,
            seconds=round(cold_s, 4),
            questions_per_s=round(cold_questions / cold_s, 1),
        ),
        embedder=embedder.name,
    )
