"""The run directory: `run.json` pins what a run was asked, `results.jsonl` holds one row
per (strategy, question), appended chunk by chunk.

Resumable: results are appended in chunks, each written with one `write` and fsynced, so a
killed run leaves whole chunks and at most one partial line, which the next run drops.
Running again with the same run directory skips every (strategy, question) already
there; `run.json` refuses other settings or another config, so a run directory cannot
silently mix two runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.harness.spec import EvalSpec
from orchestrator.config import ConclaveConfig
from orchestrator.errors import ConfigError
from orchestrator.files import append_jsonl, atomic_write_json, read_jsonl
from orchestrator.types import Item, Trace

RUN_JSON = "run.json"
RESULTS = "results.jsonl"


def open_run_dir(run_dir: Path, spec: EvalSpec, config: ConclaveConfig) -> None:
    """Create `run_dir`, or check an existing one was started with the same spec."""
    meta = run_dir / RUN_JSON
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
    if run_dir.is_dir() and any(run_dir.iterdir()):  # run.json is a run's first file
        raise ConfigError(
            f"{run_dir} holds other files and no run: a run writes results.jsonl, "
            "summary.json, report.md and chart.png there, over any of the same name; give "
            "a new or empty --out directory"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        atomic_write_json(meta, {**want, "started": started})
    except OSError as exc:  # a file there, a read-only or missing parent, a full disk
        raise ConfigError(
            f"run directory {run_dir}: cannot write there ({exc.strerror or exc}); give an "
            "--out directory this user can create and write"
        ) from None


def read_results(run_dir: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Every whole row of `results.jsonl` (none for a new run; a partial last line left
    out, and with `repair`, before a resumed run appends, cut from the file)."""
    return read_jsonl(run_dir / RESULTS, repair)


def append_results(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append one chunk's rows in one fsynced write."""
    append_jsonl(run_dir / RESULTS, list(rows))


def result_row(
    item: Item, tr: Trace, seconds: float, loads: int, session: str = ""
) -> dict[str, Any]:
    """One line of `results.jsonl`: what a person needs to audit one answer (`session`:
    which run of the directory answered it, so a resumed run counts its own time)."""
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
        "session": session,
    }
