"""`conclave zoo`: build and evaluate the embedded default's offline model zoo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.options import JsonOnly, ZooDir
from orchestrator.cli.render import emit_json, fail, figures, out, simple_table
from orchestrator.errors import ConclaveError

app = typer.Typer(help="The embedded default's offline model zoo.", no_args_is_help=True)


@app.command("build")
def zoo_build(
    profile: Annotated[str, typer.Option(help="'full', or 'reduced' (tests).")] = "full",
    directory: ZooDir = None,
    seed: Annotated[int, typer.Option(help="skillmix seed of the training data.")] = 0,
) -> None:
    """Build (or verify) the zoo: convert the registry LLMs, train the specialists."""
    from agents.zoo.build import PROFILES
    from agents.zoo.default import build_zoo, zoo_root

    root = zoo_root(directory)
    t0 = time.perf_counter()
    try:
        manifest, built = build_zoo(root, profile, seed)
    except ConclaveError as exc:
        raise fail(exc) from None
    entries = [manifest.entries[spec.name] for spec in PROFILES[profile]]
    simple_table(
        f"zoo '{profile}' at {root} ({time.perf_counter() - t0:.0f} s)",
        ("model", "kind", "architecture", "trained on", "MB", "build s"),
        (
            (
                e.name,
                e.kind + (" (new)" if e.name in built else ""),
                e.architecture,
                ", ".join(e.trained_on) or "-",
                f"{e.size_bytes / 2**20:.0f}",
                f"{e.build_s:g}",
            )
            for e in entries
        ),
    )


@app.command("eval")
def zoo_eval(
    directory: ZooDir = None,
    per_category: Annotated[int, typer.Option(min=1, help="Test questions per category.")] = 50,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only these zoo models.")
    ] = None,
    as_json: JsonOnly = False,
    output: Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")] = None,
) -> None:
    """Each zoo model's accuracy per skillmix category (test split), and the oracle's."""
    from agents.zoo.default import built_zoo, zoo_root
    from agents.zoo.evaluate import evaluate_zoo, zoo_config

    try:
        manifest = built_zoo(directory)
        cfg = zoo_config(zoo_root(directory), manifest, model)
        res = figures(evaluate_zoo(cfg, per_category, progress=not as_json))
    except ConclaveError as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    cats = sorted(next(iter(res["accuracy"].values())))
    table = Table(title=f"skillmix test accuracy (%), {res['per_category']} per category")
    table.add_column("model", no_wrap=True)
    for c in cats:
        table.add_column(c[:6], justify="right")
    table.add_column("all", justify="right")
    for name, row in res["accuracy"].items():
        table.add_row(name, *(f"{row.get(c, 0):.0f}" for c in cats), f"{res['overall'][name]:.1f}")
    table.add_row(
        "[bold]oracle[/]",
        *(f"{res['oracle']['by_category'][c]:.0f}" for c in cats),
        f"{res['oracle']['accuracy']:.1f}",
    )
    out.print(table)
    b = res["best_single"]
    out.print(
        f"best single: {b['expert']} {b['accuracy']}%  oracle: {res['oracle']['accuracy']}%  "
        f"gain: {res['oracle_gain_points']} points"
    )
