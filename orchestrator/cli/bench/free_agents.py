"""`conclave bench free-agents`: the monitor's swaps on pools whose experts change."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.options import FiguresJson, FiguresOut
from orchestrator.cli.render import emit_json, fail, figures, out, print_table
from orchestrator.errors import ConclaveError


def bench_free_agents(
    seeds: Annotated[int, typer.Option(min=1, help="Runs (and control runs), one per seed.")] = 3,
    first_seed: Annotated[
        int, typer.Option(min=0, help="The first seed (then first + 1, ...): more runs later.")
    ] = 0,
    requests: Annotated[int, typer.Option(min=10, help="Requests in each stream.")] = 2000,
    drop_at: Annotated[int, typer.Option(min=1, help="Request at which the fault hits.")] = 1000,
    incumbent: Annotated[float, typer.Option(help="Incumbent's accuracy before.")] = 0.95,
    degraded: Annotated[float, typer.Option(help="Incumbent's accuracy after.")] = 0.75,
    free_agent: Annotated[float, typer.Option(help="The free agent's accuracy.")] = 0.93,
    probes: Annotated[
        float, typer.Option(min=0.0, max=10.0, help="free_agents.probes_per_task (0: none).")
    ] = 2.0,
    window: Annotated[int, typer.Option(min=1, help="free_agents.window = min_samples.")] = 80,
    pools: Annotated[
        bool,
        typer.Option(
            "--pools",
            help="Also serve heterogeneous pools of scripted remote experts through the "
            "gateway (8 clients, feedback on every answer, the monitor's defaults): "
            "specialists, a generalist and a free agent, a drop in one specialist, and "
            "control runs (minutes per run).",
        ),
    ] = False,
    pool: Annotated[
        list[str] | None,
        typer.Option(
            help="With --pools: only these pools (repeatable); random-<seed> draws one at "
            "random (2-5 specialists, the victim and its fall drawn too; the same per seed)."
        ),
    ] = None,
    pool_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--pool-file",
            help="A pool of your own (YAML or JSON: `pool` with its scripted `experts`, "
            "the `victim`, its `degraded` accuracy, the `free_agent`; see "
            "docs/pools/free-agents.yaml); repeatable; implies --pools and runs only the "
            "pools named by --pool and given here.",
        ),
    ] = None,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """The free-agent scenario: an expert degrades mid-stream, the monitor releases it and
    promotes a free agent after probation; a control run without the drop per seed. With
    --pools, the same in heterogeneous pools served through the gateway."""
    if drop_at >= requests:
        raise fail(ValueError(f"--drop-at {drop_at} must come before the end (--requests)"))
    for name, v in (("incumbent", incumbent), ("degraded", degraded), ("free-agent", free_agent)):
        if not 0 <= v <= 1:
            raise fail(ValueError(f"--{name} {v} is not an accuracy between 0 and 1"))
    from evals.bench import run_free_agents_bench
    from evals.bench.free_agents_pools import HeteroPool, resolve_pools, run_free_agent_pools
    from evals.bench.scripted import load_spec

    try:  # before the facade scenario runs, not after
        chosen = resolve_pools(
            [*(pool or []), *(load_spec(f, HeteroPool) for f in pool_file or [])]
        )
    except ConclaveError as exc:
        raise fail(exc) from None
    pools = pools or bool(pool_file)
    result = run_free_agents_bench(
        seeds,
        requests,
        drop_at,
        incumbent,
        degraded,
        free_agent,
        probes,
        window,
        progress=not as_json,
        first_seed=first_seed,
    )
    if pools:
        try:
            result.pools = run_free_agent_pools(
                chosen or None,
                seeds,
                requests,
                drop_at,
                progress=not as_json,
                first_seed=first_seed,
            )
        except ConclaveError as exc:
            raise fail(exc) from None
    res = figures(result)
    if emit_json(res, output, as_json):
        return
    print_table(
        f"free agents: fault at request {drop_at} of {requests}",
        (
            "seed",
            "detected after",
            "probation",
            "acc before %",
            "during %",
            "after swap %",
            "lost",
            "control releases",
            "probes",
        ),
        (
            (
                r["seed"],
                r["detected_after"],
                r["probation_requests"],
                r["accuracy_before_drop"],
                r["accuracy_during"],
                r["accuracy_after_swap"],
                r["lost"] + c["lost"],
                c["releases"],
                r["probes_asked"],
            )
            for r, c in zip(res["runs"], res["controls"], strict=True)
        ),
        caption="probation and lost: requests; control releases: in the run without the fault",
    )
    out.print(res["summary"])
    if res["pools"] is not None:
        _print_pools(res["pools"])


def _print_pools(p: dict[str, Any]) -> None:
    """The heterogeneous pools' runs: one row per run and control run, in 80 columns."""
    print_table(
        "free agents in heterogeneous pools, through the gateway",
        (
            "pool",
            "run",
            "false\nrel.",
            "found\nafter",
            "swap\nafter",
            "pre",
            "during",
            "after",
            "agent\nalone",
            "victim\nok",
            "lost",
        ),
        (
            (
                r["pool"],
                f"{'drop' if r['drop_at'] is not None else 'ctrl'}/{r['seed']}",
                r["false_releases"],
                _dash(r["detected_after"]),
                _dash(r["promoted_after"]),
                _dash(r["accuracy_before"]),
                _dash(r["accuracy_during"]),
                _dash(r["accuracy_after"]),
                _dash(r["free_agent_alone_after"]),
                _dash(r["victim_healthy_after"]),
                r["lost"],
            )
            for r in [*p["runs"], *p["controls"]]
        ),
        caption="run: a drop or a control run (ctrl), and its seed; false rel.: releases of "
        "a healthy agent; found, swap after: requests from the drop to the victim's release "
        "and to the free agent's promotion; accuracy % on the victim's subjects before the "
        "drop (pre), until the promotion, after it, and on the same questions after it, the "
        "free agent alone and the victim before its fault (ok)",
    )
    for name, what in p["pools"].items():
        out.print(f"{name}: {what}")
    out.print(p["summary"])


def _dash(v: object) -> object:
    return "-" if v is None else v
