"""The run: load the data, profile (cached), answer the test set with each strategy chunk
by chunk into the run directory, then summarize and report."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.datasets import eval_items
from evals.harness.report import write_outputs
from evals.harness.rundir import append_results, open_run_dir, read_results, result_row
from evals.harness.spec import EvalSpec, check_strategies
from evals.harness.summary import summarize
from orchestrator.errors import ConfigError
from orchestrator.profiling import ensure_profile
from orchestrator.types import Item

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from orchestrator.conclave import Conclave

CHUNK = 32  # questions per resumable chunk


def run_strategies(
    conclave: Conclave,
    items: Sequence[Item],
    strategies: Sequence[str],
    run_dir: Path,
    progress: Callable[[str, int, int], None] = lambda s, done, total: None,
    session: str = "",
) -> list[dict[str, Any]]:
    """Answer `items` with each strategy, resuming from `results.jsonl`; returns the rows,
    the latest per (strategy, question). A resumed run asks again the questions whose
    row lost an expert call to an error (its new row, appended, replaces the old one)."""
    rows = _latest(read_results(run_dir, repair=True))  # appended to below
    done = {(r["strategy"], r["id"]) for r in rows if not _failed(r)}
    rows = [r for r in rows if (r["strategy"], r["id"]) in done]
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
                result_row(it, tr, dt / len(chunk), loads if i == 0 else 0, session)
                for i, (it, tr) in enumerate(zip(chunk, traces, strict=True))
            ]
            append_results(run_dir, new)
            rows.extend(new)
            finished += len(chunk)
            progress(strategy, finished, len(items))
    return rows


def _latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row of each (strategy, question): a retried row replaces the first."""
    return list({(r["strategy"], r["id"]): r for r in rows}.values())


def _failed(row: dict[str, Any]) -> bool:
    return any(a.get("error") for a in row["answers"])


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
    strategies = check_strategies(spec.strategies)
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
    profile_note = "not needed"
    if any(s.needs_profile for s in strategies):
        folder, reused = ensure_profile(
            conclave, val, profile_source, cache_dir, progress=progress, on_event=log
        )
        profile_note = (
            f"{'reused' if reused else 'built'}: {folder}"
            if folder
            else "built, not cached (an expert lost profiling calls to errors)"
        )
    session = uuid.uuid4().hex[:12]  # this run of the directory
    with _StrategyBars(spec.strategies, progress) as bar:
        rows = run_strategies(conclave, test, spec.strategies, run_dir, bar.update, session)
    wanted = {(s, i.id) for s in spec.strategies for i in test}
    rows = [r for r in rows if (r["strategy"], r["id"]) in wanted]
    summary = summarize(rows, spec.strategies, session)
    state = conclave.state
    extra = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": spec.dataset,
        "split": spec.split,
        "questions": len(test),
        "profile_questions": len(val),
        "profile": profile_note,
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
        self.tasks: dict[str, TaskID] = {}
        self.progress: Progress | None = None
        if enabled:
            from rich.console import Console

            from orchestrator.progress import progress_bar

            self.progress = progress_bar(14, console=Console(stderr=True))
            for s in strategies:
                self.tasks[s] = self.progress.add_task(s, total=None, start=False)

    def __enter__(self) -> _StrategyBars:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, strategy: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.start_task(self.tasks[strategy])
            self.progress.update(self.tasks[strategy], completed=done, total=total)
