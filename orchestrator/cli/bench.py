"""`conclave bench`: benchmarks that print figures (as tables, or JSON with --json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.options import FiguresJson, FiguresOut, levels
from orchestrator.cli.render import emit_json, fail, figures, out, print_table, simple_table
from orchestrator.errors import ConclaveError

app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)


@app.command("pool")
def bench_pool(
    questions: Annotated[int, typer.Option(min=1, help="Questions in the batch.")] = 200,
    per_question: Annotated[int, typer.Option(min=1, help="Experts asked per question.")] = 3,
    models: Annotated[int, typer.Option(min=1, help="Tiny models in the pool.")] = 5,
    naive_sample: Annotated[
        int, typer.Option(min=1, help="Requests timed for the load-per-request baseline.")
    ] = 20,
    seed: Annotated[int, typer.Option(help="Seed for the questions and the sample.")] = 0,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Grouped load-once scheduling vs loading the model per request, on tiny models."""
    from evals.bench import run_pool_bench

    try:
        res = figures(
            run_pool_bench(
                questions, per_question, models, naive_sample, seed, progress=not as_json
            )
        )
    except (ConclaveError, ValueError) as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    g, n = res["grouped"], res["naive"]
    simple_table(
        f"pool benchmark: {res['requests']} requests over {res['models']} models",
        ("scheduling", "model loads", "wall s"),
        (
            ("grouped, load once", str(g["model_loads"]), str(g["wall_s"])),
            (
                "grouped, 2nd batch",
                str(g["second_batch_model_loads"]),
                str(g["second_batch_wall_s"]),
            ),
            (f"naive ({n['note']})", f"{res['requests']} (est.)", str(n["extrapolated_wall_s"])),
        ),
    )
    out.print(f"speedup: [bold]{res['speedup']}x[/]   failed requests: {res['failed_requests']}")


@app.command("route")
def bench_route(
    questions: Annotated[int, typer.Option(min=1, help="Questions routed warm.")] = 20_000,
    experts: Annotated[int, typer.Option(min=1, help="Experts with profiles.")] = 16,
    cold: Annotated[int, typer.Option(min=1, help="Questions routed with new keywords.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the profiles and keywords.")] = 0,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Recruitment throughput with LLM calls excluded: keyword mapping, scoring, selection."""
    from evals.bench import run_routing_bench

    res = figures(
        run_routing_bench(questions=questions, experts=experts, cold_questions=cold, seed=seed)
    )
    if emit_json(res, output, as_json):
        return
    w, c = res["warm"], res["cold"]
    simple_table(
        f"routing: {res['experts']} experts, {res['inventory_keywords']} inventory "
        f"keywords ({res['embedder']})",
        ("keywords", "questions", "seconds", "questions/s"),
        (
            ("cached (repeat)", str(w["questions"]), str(w["seconds"]), str(w["questions_per_s"])),
            ("all new (cold)", str(c["questions"]), str(c["seconds"]), str(c["questions_per_s"])),
        ),
    )


@app.command("routing")
def bench_routing(
    pool: Annotated[
        list[str] | None,
        typer.Option(
            "--pool",
            help="Pool to run; repeatable. Default: specialists, generalists, dominant, "
            "faulty, noisy-keywords, misleading-keywords, twenty (also: smoke, and "
            "random-<seed>: a pool drawn at random, the same for a seed).",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Runs per pool, one per seed.")] = 3,
    per_category: Annotated[
        int, typer.Option(min=1, help="Test questions per MMLU-Pro category.")
    ] = 10,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help="Strategy to run; repeatable. Default: every registered one an eval can run "
            "(majority always runs: the oracle comes from it).",
        ),
    ] = None,
    skills: Annotated[
        str,
        typer.Option(
            help="Where conclave gets a question's skills (routing.skills): auto (the "
            "default: what profiling chose per pool), keywords (the keyword model) or "
            "embedding (its nearest validation questions, no LLM call).",
        ),
    ] = "auto",
    pool_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--pool-file",
            help="A pool of your own (YAML or JSON: `name`, `description` and scripted "
            "`experts`, each with its `accuracy` per MMLU-Pro category and a `default`; see "
            "docs/pools/routing.yaml); repeatable; runs only the pools named by --pool and "
            "given here.",
        ),
    ] = None,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Every strategy on pools of scripted experts with known accuracy per category (no
    LLM): accuracy, expert calls per question and the gap to max(oracle, majority)."""
    from evals.bench import run_pools_bench
    from evals.bench.scripted import ScriptedPool, load_spec

    try:
        given: list[str | ScriptedPool] = [*(pool or [])]
        given += [load_spec(f, ScriptedPool) for f in pool_file or []]
        res = figures(
            run_pools_bench(
                given or None,
                seeds,
                per_category,
                strategy,
                output,
                progress=not as_json,
                skills=skills,
            )
        )
    except ConclaveError as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    print_routing(res)


def print_routing(res: dict[str, Any]) -> None:
    """`conclave bench routing`'s tables: one per pool, then the run's line."""
    for p in res["pools"]:
        rows = [
            (
                s["strategy"],
                f"{s['accuracy']['mean']:.1f}",
                _range(s["accuracy"]),
                f"{s['expert_calls_per_question']:g}",
                f"{s['gap']['mean']:+.1f}",
            )
            for s in p["strategies"]
        ]
        for name, spread in (
            ("oracle (reference)", p["oracle"]),
            ("max(oracle, majority)", p["reference"]),
        ):
            rows.append((name, f"{spread['mean']:.1f}", _range(spread), "-", "-"))
        rows.append(("oracle (expected)", f"{p['expected_oracle']:.1f}", "-", "-", "-"))
        print_table(
            f"pool {p['pool']} ({p['experts']} experts)",
            ("strategy", "acc %", "range", "expert calls/q", "gap"),
            rows,
            caption=f"mean of {len(res['seeds'])} seeds; gap: minus max(oracle, majority); "
            "expected: the best expert per category by its script",
        )
        out.print(f"{p['pool']}: {p['description']}\n", highlight=False)
    if res["standings"]:
        first, n = res["strategies"][0], len(res["pools"])
        print_table(
            f"{first} against each, over {n} pools",
            ("strategy", "ahead", "level", "behind", "mean diff", "worst diff (pool)"),
            [
                (
                    s["strategy"],
                    s["ahead"],
                    s["level"],
                    s["behind"],
                    f"{s['mean_difference']:+.1f}",
                    f"{s['worst_difference']:+.1f} ({s['worst_pool']})",
                )
                for s in res["standings"]
            ],
            caption=f"pools where {first}'s mean accuracy was above, equal to, below",
        )
    out.print(
        f"{res['test_questions']} test questions, profiled on {res['profile_questions']}; "
        f"{res['wall_s']} s ({res['machine']})"
        + (f"; chart: {res['chart']}" if res["chart"] else "")
    )


def _range(spread: dict[str, float]) -> str:
    return f"{spread['min']:.1f}-{spread['max']:.1f}"


@app.command("gateway")
def bench_gateway(
    concurrency: Annotated[
        str, typer.Option(help="Closed-loop clients, per level (comma-separated).")
    ] = "1,16,64",
    requests: Annotated[
        int, typer.Option(min=1, help="Requests per level, fake expert (at least 8 per client).")
    ] = 1000,
    vllm_concurrency: Annotated[
        str, typer.Option(help="Levels for the vLLM comparison.")
    ] = "1,4,16",
    vllm_requests: Annotated[int, typer.Option(min=1, help="Requests per level, vLLM.")] = 384,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per vLLM answer.")] = 16,
    batch_window_ms: Annotated[
        float, typer.Option(min=0, help="The gateway's micro-batch window.")
    ] = 5.0,
    vllm: Annotated[
        bool, typer.Option(help="Also compare passthrough with vLLM's own server.")
    ] = True,
    in_process: Annotated[
        bool,
        typer.Option(
            help="The expert's engine core in its actor's process (the config default: "
            "fast start); without, in a process of its own, as vLLM's server runs it."
        ),
    ] = True,
    routed: Annotated[
        str,
        typer.Option(
            help="Levels for the routed model against the expert it asks, on the embedded "
            "default, with routing.skills auto (the default: what profiling chose) and "
            "keywords (the keyword model) (comma-separated, e.g. 1,4,16; empty: skip). "
            "Builds and profiles the zoo first if needed.",
        ),
    ] = "",
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Gateway latency (p50/p99) and requests/s on loopback: a zero-cost fake expert, a
    tiny vLLM model through the gateway against vLLM's own OpenAI-compatible server, and
    (--routed) the routed model against one expert."""
    fake_levels, vllm_levels = levels(concurrency), levels(vllm_concurrency)
    routed_levels = levels(routed) if routed else None
    from evals.bench import run_gateway_bench

    try:
        res = figures(
            run_gateway_bench(
                fake_levels,
                requests,
                vllm_requests,
                vllm_levels,
                max_tokens,
                batch_window_ms,
                with_vllm=vllm,
                in_process=in_process,
                routed_levels=routed_levels,
            )
        )
    except ConclaveError as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    runs = [("gateway, fake expert", r) for r in res["fake_expert"]]
    if res.get("vllm") is not None:
        runs += [("vLLM's own server", r) for r in res["vllm"]["vllm_server"]]
        runs += [("gateway -> vLLM", r) for r in res["vllm"]["gateway_passthrough"]]
    for cmp in res.get("routed") or []:
        label = cmp["skills"] + (f": {cmp['skills_from']}" if cmp["skills"] == "auto" else "")
        runs += [(f"conclave ({label})", r) for r in cmp["routed"]]
        runs += [(f"{cmp['expert']} alone", r) for r in cmp["expert_alone"]]
    keys = ("concurrency", "requests", "errors", "p50_ms", "p90_ms", "p99_ms", "requests_per_s")
    print_table(
        f"gateway on loopback ({res['machine']})",
        ("server", "clients", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "requests/s"),
        ((name, *(r[k] for k in keys)) for name, r in runs),
    )
    for c, o in (res.get("passthrough_overhead_pct") or {}).items():
        out.print(f"passthrough overhead at {c} clients: p50 {o['p50']:+}%, p99 {o['p99']:+}%")


@app.command("free-agents")
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


@app.command("failover")
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


@app.command("holds")
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


@app.command("moe")
def bench_moe(
    tokens: Annotated[str, typer.Option(help="Token counts (comma-separated).")] = (
        "1,16,128,512,2048"
    ),
    hidden: Annotated[int, typer.Option(min=1)] = 512,
    experts: Annotated[int, typer.Option(min=1)] = 8,
    top_k: Annotated[int, typer.Option(min=1)] = 2,
    intermediate: Annotated[int, typer.Option(min=1)] = 1024,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float32.")] = "bfloat16",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    rounds: Annotated[
        int, typer.Option(min=1, help="Timing rounds (each times every path and count).")
    ] = 12,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """The in-model MoE layer on this CPU: vLLM's fused kernel, the grouped GEMMs, the
    per-expert loop and the path `auto` chose, against a dense matmul of the same
    useful FLOPs and the float32 reference."""
    from kernels.bench import run_moe_bench

    if dtype not in ("bfloat16", "float32"):
        raise fail(ValueError(f"--dtype {dtype!r}: use bfloat16 or float32"))
    if device not in ("cpu", "cuda"):
        raise fail(ValueError(f"--device {device!r}: use cpu or cuda"))
    try:
        res = figures(
            run_moe_bench(
                levels(tokens), hidden, experts, top_k, intermediate, dtype, device, rounds=rounds
            )
        )
    except (ValueError, RuntimeError) as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    out.print(f"CPU: {res['cpu_line']}; {res['machine']}")
    dense = " or ".join(sorted({r["dense_dtype"] for r in res["rows"]}))
    print_table(
        f"MoE layer ({res['device']}, fused = {res['fused_kernel']}, {res['rounds']} rounds)",
        (
            "tokens",
            "fused\nms",
            "grouped\nms",
            "loop\nms",
            "auto\nms",
            "auto\npath",
            "auto\nx loop",
            "auto\nx fused",
            "auto\nx dense",
            "drift",
        ),
        (_moe_cells(r) for r in res["rows"]),
        caption="x: median of the rounds' paired speed ratios; x dense: against a dense "
        f"matmul doing the same useful FLOPs (in {dense}, the faster here); drift: the "
        "dense matmul's median round over its fastest. --json adds best-of ratios, GFLOP/s "
        "and errors.",
    )
    for r in res["rows"]:
        out.print(f"auto at {r['tokens']} tokens: {r['auto_kernel']}, {r['auto_why']}")


#: auto's path in the table's narrow column (the lines under it name the kernel)
_SHORT = {
    "fused:amx": "amx",
    "fused:vec": "vec",
    "fused:triton": "triton",
    "grouped:float32": "grouped f32",
    "grouped:mkl": "grouped mkl",
    "grouped:native": "grouped native",
    "grouped:native-bf16": "grouped native bf16",
    "naive": "loop",
}


def _moe_cells(r: dict[str, Any]) -> tuple[object, ...]:
    grouped = r["grouped_ms"]
    return (
        r["tokens"],
        f"{r['fused_ms']:.2f}",
        f"{grouped:.2f}" if grouped is not None else "-",
        f"{r['naive_ms']:.2f}",
        f"{r['auto_ms']:.2f}",
        _SHORT.get(r["auto_path"], r["auto_path"]),
        r["auto_vs_naive"],
        r["auto_vs_fused"],
        r["auto_vs_dense"],
        r["machine_drift"],
    )
