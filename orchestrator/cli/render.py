"""What the commands print: the two consoles, errors, JSON figures and tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pydantic import BaseModel

#: results and tables go to stdout; progress, notes and errors to stderr
out = Console()
err = Console(stderr=True)


def log_line(line: str) -> None:
    """A progress or lifecycle line on stderr, never wrapped: a log is read with grep."""
    err.print(line, soft_wrap=True, highlight=False, markup=False)


Figures = Mapping[str, Any]


def fail(exc: Exception) -> typer.Exit:
    """Print `exc` as the command's error; raise the returned exit (code 2)."""
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=2)


def figures(res: Figures | BaseModel) -> dict[str, Any]:
    """A result as plain JSON-ready data, whether a dict or a typed (pydantic) result."""
    from pydantic import BaseModel

    if isinstance(res, BaseModel):
        return res.model_dump(mode="json")
    return dict(res)


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout, alone (for --json)."""
    print(json.dumps(data, indent=2))


def emit_json(res: Figures | BaseModel, output: Path | None, as_json: bool) -> bool:
    """Write the figures to `output` (atomically) if asked; print them if `as_json`.
    Returns `as_json`: whether the figures were the command's whole output."""
    from orchestrator.files import atomic_write_json

    data = figures(res)
    if output:
        atomic_write_json(output, data)
    if as_json:
        print_json(data)
    return as_json


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    caption: str | None = None,
) -> None:
    """A figures table: the first column names the row, the others are right-aligned; a
    table with a caption (the wide ones) drops its inner borders to fit 80 columns."""
    table = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD if caption else box.HEAVY_HEAD,
        show_edge=not caption,
        padding=(0, 0) if caption else (0, 1),
    )
    for i, col in enumerate(columns):
        table.add_column(
            col,
            justify="left" if i == 0 else "right",
            no_wrap=i == 0,
            min_width=max(len(w) for w in col.split()),
        )
    for row in rows:
        table.add_row(*(str(x) for x in row))
    out.print(table)


def simple_table(title: str, columns: Iterable[str], rows: Iterable[Sequence[str]]) -> None:
    """A plain table of text cells under `title`, columns as rich lays them out."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def print_summary(res: Figures) -> None:
    """An eval run's summary.json as a table of strategies, then its aggregator line."""
    table = Table(
        title=f"{res['dataset']} {res['split']}: {res['questions']} questions "
        f"({res['wall_s']} s, {res['machine']})",
        caption="calls, experts, reused answers and tokens are per question",
        # a space between columns (the box's) and no padding: 72 columns, whole headers
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0),
    )
    cols = (
        "strategy",
        "acc %",
        "calls",
        "experts",
        "reused",
        "tokens",
        "wall s",
        "loads",
        "errors",
    )
    for col in cols:
        left = col == "strategy"
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    for name, s in res["strategies"].items():
        style = "bold" if name == "symbolic-moe" else "dim" if s.get("derived") else ""
        table.add_row(
            name,
            f"{s['accuracy']:.1f}",
            f"{s['calls_per_question']:g}",
            f"{s['expert_calls_per_question']:g}",
            f"{s['reused_per_question']:g}" if not s.get("derived") else "-",
            f"{s['tokens_per_question']:g}",
            f"{s['seconds']:g}" if not s.get("derived") else "-",
            str(s["model_loads"]) if not s.get("derived") else "-",
            f"[red]{s.get('errors', 0)}[/]" if s.get("errors") else "0",
            style=style,
        )
    out.print(table)
    failed: dict[str, int] = {}
    for s in res["strategies"].values():
        if not s.get("derived"):
            for ex, n in s.get("errors_by_expert", {}).items():
                failed[ex] = failed.get(ex, 0) + n
    if failed:
        out.print(
            "[red]failed expert calls[/] (results.jsonl has each error): "
            + ", ".join(f"{ex} {n}" for ex, n in sorted(failed.items(), key=lambda x: -x[1]))
        )
    out.print(
        f"aggregator: {res['aggregator']}  best single on validation: {res['best_single']}  "
        f"profile: {res['profile']}"
    )
    out.print(VARIES, style="dim")


#: What the eval table's figures depend on, printed under it: a reader comparing two
#: runs (or the README's table) knows which differences are noise.
VARIES = (
    "What varies: accuracy repeats on one machine, except where an expert's greedy "
    "answers follow how its engine batched them (vLLM's CPU build is not "
    "batch-invariant: majority vote moved between 56.2 and 57.5 in the README's runs); "
    "across CPU families (native bf16 or not, and so bf16 or float32 engines) the "
    "answers, so every accuracy, can differ by a few points (Symbolic-MoE by five on the "
    "zoo), and calls per question with them where a strategy asks more experts "
    "on disagreement; wall seconds follow the machine's load."
)
