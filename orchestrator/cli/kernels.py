"""`conclave kernels`: look inside served MoE models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.options import FiguresJson, FiguresOut, ZooDir
from orchestrator.cli.render import emit_json, fail, out, print_json, print_table
from orchestrator.errors import ConclaveError

app = typer.Typer(help="Look inside served MoE models.", no_args_is_help=True)


@app.command("profile")
def kernels_profile(
    model: Annotated[
        Path | None, typer.Option(help="An MoE model folder (default: the zoo's MoE expert).")
    ] = None,
    zoo_dir: ZooDir = None,
    per_category: Annotated[int, typer.Option(min=1, help="skillmix questions per skill.")] = 10,
    split: Annotated[str, typer.Option(help="skillmix split.")] = "test",
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Heatmap PNG (default: <cache>/kernels/).")
    ] = None,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Which in-model experts fire for which skills: an MoE model served by vLLM answers
    skillmix, and the tokens each expert took are counted per category and layer."""
    from agents.zoo.default import zoo_moe_model
    from evals.datasets import eval_items
    from kernels.activations import activation_profile, plot
    from orchestrator.config import default_cache_dir

    try:
        model = model or zoo_moe_model(zoo_dir)
        res = activation_profile(
            model, eval_items("skillmix", split, limit=per_category), progress=not as_json
        )
    except (ConclaveError, ValueError, RuntimeError) as exc:
        raise fail(exc) from None
    png = plot(res, plot_path or default_cache_dir() / "kernels" / "activation_profile.png")
    res["plot"] = str(png)
    if emit_json(res, output, as_json):
        return
    for layer in range(res["layers"]):
        print_table(
            f"layer {layer}: % of each skill's tokens per in-model expert",
            ("skill", *(f"e{e}" for e in range(res["experts"])), "distance"),
            (
                (
                    cat,
                    *(f"{100 * v:.0f}" for v in s[layer]),
                    f"{res['distance_from_overall'][cat]:.3f}",
                )
                for cat, s in res["shares"].items()
            ),
        )
    out.print(f"plot: {png}")


@app.command("mask")
def kernels_mask(
    experts: Annotated[str, typer.Option(help="In-model experts to switch off, e.g. 0,2.")],
    model: Annotated[
        Path | None, typer.Option(help="A Mixtral-style folder (default: the zoo's MoE expert).")
    ] = None,
    zoo_dir: ZooDir = None,
    per_category: Annotated[int, typer.Option(min=1, help="skillmix questions per skill.")] = 25,
    trials: Annotated[int, typer.Option(min=0, help="Random maskings to compare with.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random maskings.")] = 0,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where the variants go (default: <cache>).")
    ] = None,
    as_json: FiguresJson = False,
) -> None:
    """Serve a variant of an MoE checkpoint whose router never selects the chosen experts,
    and compare its per-skill accuracy with the original and with random maskings."""
    from agents.zoo.default import zoo_moe_model
    from evals.datasets import eval_items
    from kernels.masking import masking_study
    from orchestrator.config import default_cache_dir

    try:
        chosen = [int(x) for x in experts.split(",") if x.strip()]
        model = model or zoo_moe_model(zoo_dir)
        folder = out_dir or default_cache_dir() / "kernels" / "masked"
        folder.mkdir(parents=True, exist_ok=True)
        res = masking_study(
            model,
            chosen,
            eval_items("skillmix", "test", limit=per_category),
            folder,
            random_trials=trials,
            seed=seed,
            progress=not as_json,
        )
    except (ConclaveError, ValueError, RuntimeError) as exc:
        raise fail(exc) from None
    if as_json:
        print_json(res)
        return
    cats = sorted(next(iter(res["accuracy"].values())))
    print_table(  # skills cut to six letters, as in `zoo eval`: the table fits 80 columns
        "per-skill accuracy % with in-model experts switched off",
        ("variant", *(c[:6] for c in cats)),
        ((v, *(f"{acc[c]:g}" for c in cats)) for v, acc in res["accuracy"].items()),
        caption=f"model: {model}",
    )
