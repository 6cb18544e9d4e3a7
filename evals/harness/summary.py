"""summary.json: one `StrategySummary` per strategy that ran, then rows derived from the
answers already there.

Each expert alone and the per-category oracle come from the answers of the first strategy
in the run that asks every expert every question (`Strategy.asks_every_expert`: majority,
among the built-ins), so they cost no extra calls. The oracle picks the best expert per
category on the test split itself and is an upper reference, not a strategy.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.strategies import get_strategy


class StrategySummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accuracy: float = Field(..., description="Percent correct.")
    questions: int
    calls_per_question: float = Field(..., description="LLM calls, keywords included.")
    expert_calls_per_question: float = Field(
        0.0, description="Of those, expert answers (not keyword or aggregator calls)."
    )
    tokens_per_question: float
    seconds: float = Field(
        ...,
        description="Wall time of this run's answers (0 for derived rows; a resumed run's "
        "questions answered before it are in `resumed`, not here).",
    )
    resumed: int = Field(
        0, description="Questions answered by an earlier, interrupted run of the directory."
    )
    reused_per_question: float = Field(
        0.0,
        description="Of the calls, answers reused from an identical greedy call of an "
        "earlier strategy in this run (counted in calls and tokens, not in seconds).",
    )
    model_loads: int
    errors: int = Field(0, description="Expert calls that failed (no answer came back).")
    error_share: float = Field(0.0, description="Of the expert calls, the share that failed.")
    errors_by_expert: dict[str, int] = Field(
        default_factory=dict, description="Failed calls per expert (only those with any)."
    )
    by_category: dict[str, float] = Field(default_factory=dict)
    derived: str | None = Field(None, description="How a row without its own run was derived.")


def _pct(xs: Sequence[bool | None]) -> float:
    return round(100 * sum(bool(x) for x in xs) / len(xs), 2) if xs else 0.0


def _errors(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A row's error fields from the expert answers behind it."""
    failed = Counter(a["expert"] for a in answers if a.get("error"))
    total = sum(failed.values())
    return {
        "errors": total,
        "error_share": round(total / len(answers), 4) if answers else 0.0,
        "errors_by_expert": dict(sorted(failed.items())),
    }


def _ours(row: dict[str, Any], session: str | None) -> bool:
    return session is None or row.get("session") == session


def lossy(summary: dict[str, Any], max_share: float) -> dict[str, float]:
    """The rows (strategies and experts alone) that lost more than `max_share` of their
    expert calls to errors, with the share lost: their accuracy is not a measurement."""
    return {n: s["error_share"] for n, s in summary.items() if s["error_share"] > max_share}


def summarize(
    rows: Sequence[dict[str, Any]], strategies: Sequence[str], session: str | None = None
) -> dict[str, Any]:
    """summary.json's strategies: per strategy (in run order), then each expert alone and
    the oracle, derived from the first strategy that asks every expert, when one ran.
    With `session` (this run of the directory), seconds count this run's answers only."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["strategy"]].append(r)
    out: dict[str, Any] = {}
    for s in strategies:
        rs = by.get(s, [])
        if not rs:
            continue
        cats: dict[str, list[bool]] = defaultdict(list)
        for r in rs:
            cats[str(r["category"])].append(r["correct"])
        out[s] = StrategySummary(
            accuracy=_pct([r["correct"] for r in rs]),
            questions=len(rs),
            calls_per_question=round(sum(r["calls"] for r in rs) / len(rs), 2),
            expert_calls_per_question=round(sum(len(r["experts"]) for r in rs) / len(rs), 2),
            tokens_per_question=round(sum(r["tokens"] for r in rs) / len(rs), 1),
            seconds=round(sum(r["seconds"] for r in rs if _ours(r, session)), 1),
            resumed=sum(not _ours(r, session) for r in rs),
            reused_per_question=round(sum(r.get("reused_calls", 0) for r in rs) / len(rs), 2),
            model_loads=sum(r["model_loads"] for r in rs),
            **_errors([a for r in rs for a in r["answers"]]),
            by_category={c: _pct(v) for c, v in sorted(cats.items())},
        ).model_dump()
    source = next((s for s in strategies if get_strategy(s).asks_every_expert), None)
    full = by.get(source, []) if source else []
    if source and full:
        out |= _derived(full, source)
    return out


def _derived(full: Sequence[dict[str, Any]], source: str) -> dict[str, Any]:
    """Each expert alone and the oracle, from the rows of `source`, which asked every expert."""
    out: dict[str, Any] = {}
    per_expert: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    tokens: dict[str, int] = defaultdict(int)
    answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in full:
        for a in r["answers"]:
            per_expert[a["expert"]][str(r["category"])].append(a["choice"] == r["gold"])
            tokens[a["expert"]] += a.get("tokens", 0)
            answers[a["expert"]].append(a)
    for ex, cats in per_expert.items():
        flat = [x for v in cats.values() for x in v]
        out[f"single:{ex}"] = StrategySummary(
            accuracy=_pct(flat),
            questions=len(flat),
            calls_per_question=1.0,
            expert_calls_per_question=1.0,
            tokens_per_question=round(tokens[ex] / len(flat), 1),
            seconds=0.0,
            model_loads=0,
            **_errors(answers[ex]),
            by_category={c: _pct(v) for c, v in sorted(cats.items())},
            derived=f"this expert's answers in the {source} strategy",
        ).model_dump()
    cat_names = sorted({str(r["category"]) for r in full})

    def best_in(category: str) -> str:
        return max(per_expert, key=lambda ex: _pct(per_expert[ex][category]))

    best = {c: best_in(c) for c in cat_names}
    by_cat = {c: _pct(per_expert[best[c]][c]) for c in cat_names}
    n = {c: len(per_expert[best[c]][c]) for c in cat_names}
    out["oracle (reference)"] = StrategySummary(
        accuracy=round(sum(by_cat[c] * n[c] for c in cat_names) / sum(n.values()), 2),
        questions=sum(n.values()),
        calls_per_question=1.0,
        expert_calls_per_question=1.0,
        tokens_per_question=0.0,
        seconds=0.0,
        model_loads=0,
        by_category=by_cat,
        derived="best expert per category on this split itself: an upper reference, "
        f"not a strategy ({', '.join(f'{c}: {e}' for c, e in best.items())})",
    ).model_dump()
    return out
