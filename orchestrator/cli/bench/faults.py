"""`conclave bench failover` and `conclave bench holds`: serving through faults."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.options import FiguresJson, FiguresOut
from orchestrator.cli.render import emit_json, fail, figures, out, print_table
from orchestrator.errors import ConclaveError


def bench_failover(
    clients: Annotated[int, typer.Option(min=1, help="Closed-loop clients.")] = 8,
    seconds: Annotated[float, typer.Option(min=1.0, help="Length of each phase.")] = 30.0,
    victim: Annotated[
        str | None,
        typer.Option(help="The expert whose actor is killed (default: the one most asked)."),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="routing.on_expert_down: failover, wait or fail.")
    ] = "failover",
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """The routed model on the embedded default while one expert's engine dies: latency
    of the questions routed elsewhere before and after the kill, failures, restart time."""
    if policy not in ("failover", "wait", "fail"):
        raise fail(ValueError(f"--policy {policy!r}: choose failover, wait or fail"))
    from evals.bench import run_failover_bench

    try:
        res = figures(run_failover_bench(clients, seconds, victim, policy, progress=not as_json))
    except ConclaveError as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    rows = [
        ("before", "others", res["baseline_others"]),
        ("before", res["victim"], res["baseline_victim"]),
        ("after kill", "others", res["after_kill_others"]),
        ("after kill", res["victim"], res["after_kill_victim"]),
        ("before", "never it", res["never_victim_before"]),
        ("after kill", "never it", res["never_victim_after"]),
    ]
    keys = ("requests", "failed", "failed_over", "p50_ms", "p90_ms", "p99_ms")
    print_table(
        f"failover ({res['policy']}, {res['clients']} clients, {res['machine']})",
        ("phase", "routed to", "requests", "failed", "failed over", "p50 ms", "p90 ms", "p99 ms"),
        ((phase, who, *(st[k] for k in keys)) for phase, who, st in rows),
        caption=f"others: asked another expert first; never it: no stage asked {res['victim']} "
        "or passed it over as down",
    )
    out.print(
        f"p99 after the kill over before, questions routed first elsewhere: "
        f"{res['p99_ratio_others']}; whose route never reached {res['victim']}: "
        f"{res['p99_ratio_never_victim']}; {res['victim']} back after {res['restart_s']} s"
    )


def bench_holds(
    pool: Annotated[str, typer.Option(help="A pool of `bench free-agents --pools`.")] = (
        "three-specialists"
    ),
    rounds: Annotated[int, typer.Option(min=1, help="Pairs of rounds (off, on).")] = 2,
    per_category: Annotated[
        int, typer.Option(min=1, help="Test questions per MMLU-Pro category.")
    ] = 30,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Routed questions while one expert's endpoint fails every call: with the pool's
    holds off (every question routed to it pays its calls and retries) and on
    (pool.down_hold_s): seconds, calls to it, questions right."""
    from evals.bench.holds import run_holds_bench

    try:
        res = figures(run_holds_bench(pool, per_category, rounds, progress=not as_json))
    except ConclaveError as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    print_table(
        f"{res['victim']} failing every call ({res['pool']}, {res['questions']} questions, "
        f"{res['batch']} at a time)",
        ("round", "holds", "seconds", f"calls to {res['victim']}", "planned past", "right"),
        (
            (
                i + 1,
                "on" if r["holds"] else "off",
                r["seconds"],
                r["victim_calls"],
                r["planned_past"],
                r["right"],
            )
            for i, r in enumerate(res["rounds"])
        ),
        caption=f"holds: down after {res['down_after']} failures in a row, for "
        f"{res['down_hold_s']:g} s; {res['machine']}",
    )
    out.print(f"seconds with holds off over on: {res['speedup']} (median over pairs of rounds)")
