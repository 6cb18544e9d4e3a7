"""Options shared by several commands, declared once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config; default: the embedded zoo (built if missing)."
    ),
]
ZooProfile = Annotated[
    str, typer.Option("--zoo", help="Embedded zoo profile when no --config: full or reduced.")
]
ZooDir = Annotated[Path | None, typer.Option("--dir", help="Zoo folder (default: <cache>/zoo).")]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data", "-d", help="'skillmix', or a local JSON/JSONL/Parquet file (MMLU-Pro, GPQA, ...)."
    ),
]
ProfileDataOpt = Annotated[
    str | None,
    typer.Option(
        "--profile-data",
        help="Validation file profiles are built from (needed with a file --data).",
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        "-n",
        min=1,
        help="Questions per category (skillmix, eval: 10; a file: drawn with --seed).",
    ),
]
CategoryOpt = Annotated[
    list[str] | None, typer.Option("--category", help="Only this category; repeatable.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the data and the router.")]
JsonOnly = Annotated[bool, typer.Option("--json", help="Print JSON only.")]

#: the benchmarks' figures: as JSON on stdout, and/or written to a file
FiguresJson = Annotated[bool, typer.Option("--json", help="Print the figures as JSON only.")]
FiguresOut = Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")]


def levels(text: str) -> list[int]:
    """Positive integers separated by commas (`--concurrency 1,16,64`, `--tokens ...`)."""
    try:
        parsed = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parsed = []
    if not parsed or min(parsed) < 1:
        raise typer.BadParameter(f"{text!r}: give positive integers separated by commas, e.g. 1,16")
    return parsed
