"""`conclave eval`, `profile` and `route`: the facade on a config or the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from orchestrator.cli.options import (
    CategoryOpt,
    ConfigOpt,
    DataOpt,
    JsonOnly,
    LimitOpt,
    ProfileDataOpt,
    SeedOpt,
    ZooDir,
    ZooProfile,
    pool_config,
)
from orchestrator.cli.render import err, fail, figures, out, print_json, print_summary, simple_table
from orchestrator.errors import ConclaveError

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave
    from skills.profiles import ProfileSet


def stop_on_sigterm(conclave: Conclave) -> None:
    """SIGTERM stops the run as Ctrl-C does (the pool closes, nothing reloads, the run
    directory keeps every finished chunk). Ray is connected first, on this thread: its own
    SIGTERM handler, installed then, would exit from inside a Ray call instead."""
    import signal

    conclave.pool.connect()

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def eval_cmd(
    config: ConfigOpt = None,
    data: DataOpt = "skillmix",
    split: Annotated[str, typer.Option(help="Split reported (skillmix).")] = "test",
    profile_data: ProfileDataOpt = None,
    limit: LimitOpt = None,
    category: CategoryOpt = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help="Strategy to run; repeatable. Default: conclave, best-single, random-k, "
            "majority, moa, symbolic-moe.",
        ),
    ] = None,
    seed: SeedOpt = 0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Run directory; an existing one resumes. Default: <cache>/runs/..."
        ),
    ] = None,
    zoo: ZooProfile = None,
    zoo_dir: ZooDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json only.")] = False,
    attach: Annotated[
        str | None,
        typer.Option(
            help="Use the experts a running `conclave serve` on the same Ray cluster loaded "
            "(its job id, printed at its start) instead of loading them again.",
        ),
    ] = None,
    max_error_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Exit 1 when a strategy or expert lost more than this share of its expert "
            "calls to errors (its accuracy is then not a measurement).",
        ),
    ] = 0.05,
    allow_errors: Annotated[
        bool, typer.Option("--allow-errors", help="Exit 0 however many calls failed.")
    ] = False,
) -> None:
    """Evaluate the strategies on a benchmark (the main job).

    Profiles the experts on the validation split (cached), answers the test split with each
    strategy, and writes a run directory: results.jsonl, summary.json, report.md and
    chart.png. A killed run resumes from its run directory (--out).
    """
    from datetime import UTC, datetime

    from evals.harness import DEFAULT_STRATEGIES, EvalSpec, run_eval
    from evals.harness.summary import lossy
    from orchestrator.conclave import Conclave

    spec = EvalSpec(
        dataset=data,
        split=split,
        profile_dataset=profile_data,
        limit=limit,
        categories=category or [],
        strategies=strategy or list(DEFAULT_STRATEGIES),
        seed=seed,
    )
    try:
        cfg = pool_config(config, zoo, zoo_dir, on_event=err.print)
        if attach:
            cfg = cfg.model_copy(
                update={"cluster": cfg.cluster.model_copy(update={"attach": attach})}
            )
        cache = cfg.resolved_cache_dir()
        if output is None:
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            output = cache / "runs" / f"{stamp}-{Path(data).stem}"
        with Conclave(cfg, reuse_answers=True) as c:
            stop_on_sigterm(c)
            res = figures(run_eval(c, spec, output, cache, progress=not as_json, log=err.print))
    except ConclaveError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        hint = f"; resume with the same command and --out {output}" if output else ""
        err.print(f"interrupted{hint}")
        raise typer.Exit(code=130) from None
    if as_json:
        print_json(res)
    else:
        print_summary(res)
        out.print(
            f"run directory: [bold]{output}[/]  (report.md, summary.json, results.jsonl, chart.png)"
        )
    lost = lossy(res["strategies"], max_error_share)
    if lost and not allow_errors:
        err.print(
            "[red]error:[/] failed expert calls: "
            + ", ".join(f"{n} lost {share:.0%}" for n, share in lost.items())
            + f" of its calls (more than --max-error-share {max_error_share:g}); their "
            "accuracy is not a measurement. results.jsonl has each error; fix the "
            "experts (`conclave config validate`) and run the same command to retry the "
            "failed questions, or pass --allow-errors"
        )
        raise typer.Exit(code=1)


def profile_cmd(
    config: ConfigOpt = None,
    data: DataOpt = "skillmix",
    split: Annotated[str, typer.Option(help="Split profiled (skillmix).")] = "validation",
    limit: LimitOpt = None,
    category: CategoryOpt = None,
    seed: SeedOpt = 0,
    zoo: ZooProfile = None,
    zoo_dir: ZooDir = None,
    as_json: JsonOnly = False,
) -> None:
    """Profile every expert on a validation set (cached; eval and route reuse it).

    Keywords per question, +1/-1 per keyword per expert, the skill inventory, and the
    aggregator chosen on the aggregation benchmark.
    """
    from evals.datasets import eval_items
    from orchestrator.conclave import Conclave
    from orchestrator.profiling import ensure_profile

    try:
        cfg = pool_config(config, zoo, zoo_dir, on_event=err.print)
        items = eval_items(data, split, limit, category, seed)
        with Conclave(cfg) as c:
            folder, reused = ensure_profile(
                c, items, data, cfg.resolved_cache_dir(), progress=not as_json, on_event=err.print
            )
            state = c.state
            top = _top_skills(c)
    except ConclaveError as exc:
        raise fail(exc) from None
    assert state is not None  # ensure_profile loads or builds it
    if as_json:
        print_json(
            {
                "folder": str(folder) if folder else None,
                "reused": reused,
                **state.model_dump(),
                "top_skills": top,
            }
        )
        return
    simple_table(
        f"profiles from {len(items)} {data} {split} questions ({folder or 'not cached'})",
        ("expert", "validation acc %", "prior strength", "top skills (+1/-1 sum)"),
        (
            (
                name,
                f"{acc:.1f}",
                f"{state.prior_of(name):g}",
                ", ".join(f"{k} {v:+g}" for k, v in top.get(name, [])),
            )
            for name, acc in state.accuracy.items()
        ),
    )
    scores = ", ".join(f"{k} {v:g}%" for k, v in state.aggregator_scores.items())
    out.print(
        f"aggregator: [bold]{state.aggregator}[/] ({scores}); best single: {state.best_single}"
    )


def _top_skills(c: Conclave) -> dict[str, list[tuple[str, int]]]:
    """Each expert's three skills with the highest +1/-1 sums."""
    profiles: ProfileSet | None = c.profiles
    assert profiles is not None  # ensure_profile loads or builds them
    return {
        name: sorted(p.skills.items(), key=lambda kv: -kv[1])[:3]
        for name, p in profiles.profiles.items()
    }


def route_cmd(
    question: Annotated[
        list[str], typer.Option("--explain", "-q", help="Question to route; repeatable.")
    ],
    config: ConfigOpt = None,
    data: DataOpt = "skillmix",
    split: Annotated[str, typer.Option(help="Split profiled (skillmix).")] = "validation",
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            "-s",
            help="Strategy to explain. Default: the served one (routing.strategy, conclave); "
            "symbolic-moe shows the paper's S, g and weights.",
        ),
    ] = None,
    zoo: ZooProfile = None,
    zoo_dir: ZooDir = None,
    as_json: JsonOnly = False,
) -> None:
    """Explain whom a routed strategy asks first for a question, and why.

    Prints the question's keywords and skills, and each expert's estimated accuracy and
    evidence (conclave), or its S, g and weight (symbolic-moe). Only the keyword model
    runs; the profile is the cached one.
    """
    from evals.datasets import eval_items
    from orchestrator.conclave import Conclave
    from orchestrator.profiling import ensure_profile
    from orchestrator.types import Item

    blank = [i + 1 for i, q in enumerate(question) if not q.strip()]
    if blank:  # before any profiling: the keyword model would invent skills for nothing
        raise typer.BadParameter(f"question {blank[0]} is blank", param_hint="--explain")
    try:
        cfg = pool_config(config, zoo, zoo_dir, on_event=err.print)
        items = eval_items(data, split, limit, None, seed)
        with Conclave(cfg) as c:
            ensure_profile(
                c, items, data, cfg.resolved_cache_dir(), progress=not as_json, on_event=err.print
            )
            asked = [Item(id=f"q{i}", question=q) for i, q in enumerate(question)]
            plans = c.plan(asked, strategy)
    except ConclaveError as exc:
        raise fail(exc) from None
    if as_json:
        print_json([p.model_dump(by_alias=True) for p in plans])
        return
    for q, p in zip(question, plans, strict=True):
        out.print(f"[bold]{q}[/]")
        out.print(f"  strategy: {p.strategy}   asks first: {', '.join(p.experts) or '(none)'}")
        out.print(f"  keywords: {', '.join(p.keywords) or '(none)'}")
        table = Table(show_header=True, box=None, padding=(0, 2))
        if p.explanation is not None:
            why = p.explanation
            out.print(
                f"  skills:   {', '.join(why.skills) or '(none)'}   neighbours' weight: "
                f"{why.blend:g}   budget: {why.budget} calls/question"
            )
            for col in ("expert", "estimated accuracy", "evidence", "asked first"):
                table.add_column(col, justify="left" if col == "expert" else "right")
            for ex, acc in why.estimates.items():
                first = "yes" if ex in p.experts else ""
                table.add_row(ex, f"{acc:.3f}", f"{why.evidence.get(ex, 0):g}", first)
        elif p.routing is not None:
            d = p.routing
            out.print(f"  skills:   {', '.join(d.skills) or '(none)'}   rule: {d.rule}")
            for col in ("expert", "S (local)", "g (global)", "weight", "drawn"):
                table.add_column(col, justify="left" if col == "expert" else "right")
            for sc in sorted(d.scores, key=lambda x: -x.weight):
                table.add_row(
                    sc.expert,
                    f"{sc.local:g}",
                    f"{sc.global_:.3f}",
                    f"{sc.weight:.3f}",
                    str(d.chosen.count(sc.expert)) if sc.expert in d.chosen else "",
                )
        out.print(table)
