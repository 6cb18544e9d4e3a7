"""Options shared by several commands, declared once so they read the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config import ConclaveConfig

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config; default: the embedded zoo (built if missing)."
    ),
]
ZooProfile = Annotated[
    str | None,
    typer.Option("--zoo", help="Embedded zoo profile when no --config: full (default) or reduced."),
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


def zoo_options_unused(config: Path | None, zoo: str | None, zoo_dir: Path | None) -> None:
    """`--zoo` and `--dir` choose the embedded zoo; with `--config` they are refused rather
    than silently ignored: the user meant one of the two pools. Raises `ConfigError`."""
    given = [name for name, v in (("--zoo", zoo), ("--dir", zoo_dir)) if v is not None]
    if config is not None and given:
        raise ConfigError(
            f"{' and '.join(given)} choose{'s' if len(given) == 1 else ''} the embedded zoo, "
            f"but --config {config} gives the experts: drop one or the other"
        )


def pool_config(
    config: Path | None,
    zoo: str | None,
    zoo_dir: Path | None,
    *,
    on_event: Callable[[str], object],
) -> ConclaveConfig:
    """The config file's pool, or the embedded zoo's (profile `zoo`, default full), built
    first if missing. Raises `ConfigError` on `--zoo`/`--dir` with `--config`."""
    from agents.zoo.default import resolve_config

    zoo_options_unused(config, zoo, zoo_dir)
    return resolve_config(config, zoo or "full", zoo_dir, on_event=on_event)


def levels(text: str) -> list[int]:
    """Positive integers separated by commas (`--concurrency 1,16,64`, `--tokens ...`)."""
    try:
        parsed = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parsed = []
    if not parsed or min(parsed) < 1:
        raise typer.BadParameter(f"{text!r}: give positive integers separated by commas, e.g. 1,16")
    return parsed
