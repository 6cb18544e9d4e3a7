"""`conclave eval`: profile the experts on a validation set, answer a test set with every
strategy, and write a run directory a person can read at a glance.

    run_dir/
      run.json        what was asked (dataset, split, strategies, seed, ...) and the config
      results.jsonl   one line per (strategy, question): keywords, chosen experts, their
                      answers, final answer, gold, correct; appended chunk by chunk
      summary.json    strategy -> accuracy, calls, tokens, seconds, model loads
      report.md       the tables, per-category accuracy, and the chart
      chart.png       accuracy against expert calls per question, one point per strategy

Resumable: results are appended in chunks, each written with one `write` and fsynced, so a
killed run leaves whole chunks and at most one partial line, which the next run drops.
Running again with the same run directory skips every (strategy, question) already
there. `summary.json`, `report.md` and `chart.png` are rewritten atomically from
`results.jsonl` at the end, so they always describe whole results.

Profiling is cached under `<cache>/profiles/<key>`: the key hashes the experts' configs
(and their model files' names, sizes and times), the routing settings and the validation
items, so a repeat run reuses it and any change profiles again.

Each expert alone and the per-category oracle come from the majority strategy's answers
(it asks every expert every question), so they cost no extra calls; the oracle picks the
best expert per category on the test split itself and is an upper reference, not a
strategy.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.datasets import SKILLMIX_LIMIT, eval_items
from orchestrator.conclave import STRATEGIES, Conclave
from orchestrator.config import ConclaveConfig
from orchestrator.errors import ConfigError
from orchestrator.files import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
)
from orchestrator.profiling import ensure_profile
from orchestrator.types import Item, Trace

DEFAULT_STRATEGIES = ("best-single", "random-k", "majority", "moa", "symbolic-moe")
CHUNK = 32  # questions per resumable chunk


class EvalSpec(BaseModel):
    """What an eval run is asked to do; a run directory resumes only the same spec."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("skillmix", description="'skillmix' or a local dataset file.")
    split: str = Field("test", description="Split answered (skillmix).")
    profile_dataset: str | None = Field(
        None, description="Validation file profiles are built from; default: the dataset's."
    )
    profile_split: str = Field("validation", description="Split profiled (skillmix).")
    limit: int | None = Field(
        None,
        ge=1,
        description=f"Questions per category (skillmix; default {SKILLMIX_LIMIT}) or rows "
        "of a file (default: all).",
    )
    profile_limit: int | None = Field(None, ge=1, description="Same, for the validation set.")
    categories: list[str] = Field(default_factory=list, description="Only these categories.")
    strategies: list[str] = Field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    seed: int = Field(0, description="Seed of the data and of the router.")


class StrategySummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accuracy: float = Field(..., description="Percent correct.")
    questions: int
    calls_per_question: float = Field(..., description="LLM calls, keywords included.")
    expert_calls_per_question: float = Field(
        0.0, description="Of those, expert answers (not keyword or aggregator calls)."
    )
    tokens_per_question: float
    seconds: float = Field(..., description="Wall time in this run (0 for derived rows).")
    reused_per_question: float = Field(
        0.0,
        description="Of the calls, answers reused from an identical greedy call of an "
        "earlier strategy in this run (counted in calls and tokens, not in seconds).",
    )
    model_loads: int
    by_category: dict[str, float] = Field(default_factory=dict)
    derived: str | None = Field(None, description="How a row without its own run was derived.")


# ---- results.jsonl ------------------------------------------------------------------------


def _row(item: Item, tr: Trace, seconds: float, loads: int) -> dict[str, Any]:
    return {
        "strategy": tr.strategy,
        "id": item.id,
        "category": item.category,
        "keywords": tr.keywords,
        "skills": tr.routing.skills if tr.routing else [],
        "experts": [a.expert for a in tr.answers],
        "answers": [
            {
                "expert": a.expert,
                "choice": a.choice,
                "weight": a.weight,
                "text": a.text,
                "error": a.error,
                "tokens": a.tokens,
            }
            for a in tr.answers
        ],
        "aggregator": tr.aggregator,
        "aggregator_text": tr.aggregator_text,
        "fell_back_to_vote": tr.fell_back_to_vote,
        "final": tr.choice,
        "gold": item.gold_answer,
        "correct": tr.correct,
        "calls": tr.calls,
        "reused_calls": sum(a.cached for a in tr.answers),
        "tokens": tr.tokens,
        "seconds": round(seconds, 4),
        "model_loads": loads,
    }


# ---- the run ------------------------------------------------------------------------------


def open_run_dir(run_dir: Path, spec: EvalSpec, config: ConclaveConfig) -> None:
    """Create `run_dir`, or check an existing one was started with the same spec."""
    meta = run_dir / "run.json"
    want = {"spec": spec.model_dump(mode="json"), "config": config.model_dump(mode="json")}
    if meta.exists():
        try:
            have = json.loads(meta.read_text())
        except ValueError:
            have = None
        if have != {**want, "started": (have or {}).get("started")}:
            raise ConfigError(
                f"{run_dir} holds a run with other settings or another config; give a new "
                "--out directory, or the same options to resume it"
            )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta, {**want, "started": datetime.now(UTC).isoformat(timespec="seconds")})


def run_strategies(
    conclave: Conclave,
    items: Sequence[Item],
    strategies: Sequence[str],
    run_dir: Path,
    progress: Callable[[str, int, int], None] = lambda s, done, total: None,
) -> list[dict[str, Any]]:
    """Answer `items` with each strategy, resuming from `results.jsonl`; returns all rows."""
    path = run_dir / "results.jsonl"
    rows = read_jsonl(path)
    done = {(r["strategy"], r["id"]) for r in rows}
    for strategy in strategies:
        todo = [it for it in items if (strategy, it.id) not in done]
        finished = len(items) - len(todo)
        progress(strategy, finished, len(items))
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            loads0 = conclave.pool.stats.loads
            t0 = time.perf_counter()
            traces = conclave.answer(chunk, strategy)
            dt = time.perf_counter() - t0
            loads = conclave.pool.stats.loads - loads0
            new = [
                _row(it, tr, dt / len(chunk), loads if i == 0 else 0)
                for i, (it, tr) in enumerate(zip(chunk, traces, strict=True))
            ]
            append_jsonl(path, new)
            rows.extend(new)
            finished += len(chunk)
            progress(strategy, finished, len(items))
    return rows


def _pct(xs: Sequence[bool | None]) -> float:
    return round(100 * sum(bool(x) for x in xs) / len(xs), 2) if xs else 0.0


def summarize(rows: Sequence[dict[str, Any]], strategies: Sequence[str]) -> dict[str, Any]:
    """summary.json: per strategy (in run order), then each expert alone and the oracle,
    derived from the majority strategy's answers when it ran."""
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
            seconds=round(sum(r["seconds"] for r in rs), 1),
            reused_per_question=round(sum(r.get("reused_calls", 0) for r in rs) / len(rs), 2),
            model_loads=sum(r["model_loads"] for r in rs),
            by_category={c: _pct(v) for c, v in sorted(cats.items())},
        ).model_dump()
    full = by.get("majority", [])
    if full:
        per_expert: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        tokens: dict[str, int] = defaultdict(int)
        for r in full:
            for a in r["answers"]:
                per_expert[a["expert"]][str(r["category"])].append(a["choice"] == r["gold"])
                tokens[a["expert"]] += a.get("tokens", 0)
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
                by_category={c: _pct(v) for c, v in sorted(cats.items())},
                derived="this expert's answers in the majority strategy",
            ).model_dump()
        cat_names = sorted({str(r["category"]) for r in full})
        best = {c: max(per_expert, key=lambda ex, c=c: _pct(per_expert[ex][c])) for c in cat_names}
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


def chart_png(summary: dict[str, Any], title: str) -> bytes:
    """Accuracy against expert calls per question, one labelled point per row."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, s in summary.items():
        derived = s.get("derived") is not None
        ax.scatter(
            s["calls_per_question"],
            s["accuracy"],
            marker="o" if not derived else "x",
            s=60,
            color="tab:red" if name == "symbolic-moe" else "tab:gray" if derived else "tab:blue",
        )
        ax.annotate(
            name,
            (s["calls_per_question"], s["accuracy"]),
            fontsize=8,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("LLM calls per question")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def report_md(summary: dict[str, Any], spec: EvalSpec, extra: dict[str, Any]) -> str:
    lines = [
        f"# Conclave eval: {spec.dataset} ({spec.split})",
        "",
        f"- date: {extra.get('date')}",
        f"- questions: {extra.get('questions')}; profiled on {extra.get('profile_questions')} "
        f"{spec.profile_split} questions ({extra.get('profile')})",
        f"- aggregator: {extra.get('aggregator')}; best single on validation: "
        f"{extra.get('best_single')}",
        f"- machine: {extra.get('machine')}",
        "",
        "| strategy | accuracy % | calls / q | expert calls / q | tokens / q | wall s | "
        "model loads |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['accuracy']:.1f} | {s['calls_per_question']:g} | "
            f"{s['expert_calls_per_question']:g} | {s['tokens_per_question']:g} | "
            f"{s['seconds']:g} | {s['model_loads']} |"
        )
    cats = sorted({c for s in summary.values() for c in s["by_category"]})
    lines += ["", "## Accuracy per category (%)", ""]
    lines.append("| strategy | " + " | ".join(cats) + " |")
    lines.append("|---|" + "---:|" * len(cats))
    for name, s in summary.items():
        row = " | ".join(f"{s['by_category'].get(c, float('nan')):.0f}" for c in cats)
        lines.append(f"| {name} | {row} |")
    lines += [
        "",
        "Calls and tokens are each strategy's own cost. Experts answer greedily, so an "
        "expert's answer to a question is computed once per run and reused by later "
        "strategies: wall seconds count only the work a strategy added "
        "(reused calls per question: "
        + ", ".join(
            f"{n} {s['reused_per_question']:g}" for n, s in summary.items() if not s.get("derived")
        )
        + ").",
    ]
    notes = [f"- {n}: {s['derived']}" for n, s in summary.items() if s.get("derived")]
    if notes:
        lines += ["", "Rows without their own run:", "", *notes]
    lines += ["", "![accuracy against calls](chart.png)", ""]
    return "\n".join(lines)


def write_outputs(run_dir: Path, summary: dict[str, Any], spec: EvalSpec, extra: dict[str, Any]):  # type: ignore[no-untyped-def]
    atomic_write_json(run_dir / "summary.json", {"strategies": summary, **extra})
    atomic_write_text(run_dir / "report.md", report_md(summary, spec, extra))
    title = f"{spec.dataset} {spec.split}: accuracy vs calls ({extra.get('questions')} questions)"
    atomic_write_bytes(run_dir / "chart.png", chart_png(summary, title))


def check_strategies(strategies: Sequence[str]) -> None:
    bad = [s for s in strategies if s not in STRATEGIES or s == "single"]
    if bad:
        allowed = ", ".join(s for s in STRATEGIES if s != "single")
        raise ConfigError(f"unknown strategies {bad}; choose from {allowed}")


def machine() -> str:
    import platform

    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"


def run_eval(
    conclave: Conclave,
    spec: EvalSpec,
    run_dir: Path,
    cache_dir: Path,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The whole eval: load data, profile (cached), answer with every strategy (resuming
    from `run_dir`), then write summary.json, report.md and chart.png. Returns the summary."""
    check_strategies(spec.strategies)
    t0 = time.perf_counter()
    test = eval_items(spec.dataset, spec.split, spec.limit, spec.categories, spec.seed)
    profile_source = spec.profile_dataset or spec.dataset
    if profile_source == spec.dataset and spec.dataset != "skillmix":
        raise ConfigError(
            "profiling needs a validation set apart from the test file: give --profile-data "
            "(for the Symbolic-MoE files, the *_train.json next to the *_test.json)"
        )
    val = eval_items(
        profile_source,
        spec.profile_split,
        spec.profile_limit or spec.limit,
        spec.categories,
        spec.seed,
    )
    overlap = {i.question for i in val} & {i.question for i in test}
    if overlap:
        raise ConfigError(
            f"{len(overlap)} test questions are also in the validation set; profile on "
            "questions apart from the ones reported"
        )
    open_run_dir(run_dir, spec, conclave.config)
    needs_profile = any(s in ("best-single", "moa", "symbolic-moe") for s in spec.strategies)
    folder, reused = None, False
    if needs_profile:
        folder, reused = ensure_profile(
            conclave, val, profile_source, cache_dir, progress=progress, on_event=log
        )
    bar = _StrategyBars(spec.strategies, progress)
    with bar:
        rows = run_strategies(conclave, test, spec.strategies, run_dir, bar.update)
    wanted = {(s, i.id) for s in spec.strategies for i in test}
    rows = [r for r in rows if (r["strategy"], r["id"]) in wanted]
    summary = summarize(rows, spec.strategies)
    state = conclave.state
    extra = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": spec.dataset,
        "split": spec.split,
        "questions": len(test),
        "profile_questions": len(val),
        "profile": f"{'reused' if reused else 'built'}: {folder}" if folder else "not needed",
        "aggregator": state.aggregator if state else None,
        "aggregator_scores": state.aggregator_scores if state else {},
        "best_single": state.best_single if state else None,
        "validation_accuracy": state.accuracy if state else {},
        "machine": machine(),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_outputs(run_dir, summary, spec, extra)
    return {"strategies": summary, **extra}


class _StrategyBars:
    """One rich progress bar per strategy (questions answered, resumed ones included)."""

    def __init__(self, strategies: Sequence[str], enabled: bool) -> None:
        self.enabled = enabled
        self.tasks: dict[str, Any] = {}
        if enabled:
            from rich.console import Console

            from orchestrator.progress import progress_bar

            self.progress = progress_bar(14, console=Console(stderr=True))
            for s in strategies:
                self.tasks[s] = self.progress.add_task(s, total=None, start=False)

    def __enter__(self) -> _StrategyBars:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, strategy: str, done: int, total: int) -> None:
        if self.enabled:
            self.progress.start_task(self.tasks[strategy])
            self.progress.update(self.tasks[strategy], completed=done, total=total)
