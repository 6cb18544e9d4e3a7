"""The `conclave` command line: a thin shell over the orchestrator and the pool.

Heavy libraries (torch, vLLM, Ray, litellm) load only inside the commands that need them,
so `conclave --help` is instant.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from orchestrator.errors import ConclaveError

app = typer.Typer(
    name="conclave",
    help="Conclave: answer each question with the right expert LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and explain configuration files.", no_args_is_help=True)
pool_app = typer.Typer(help="Run requests on the expert pool.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
zoo_app = typer.Typer(help="The embedded default's offline model zoo.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(pool_app, name="pool")
app.add_typer(bench_app, name="bench")
app.add_typer(zoo_app, name="zoo")

out = Console()
err = Console(stderr=True)


def _emit_json(res: dict[str, object], output: Path | None, as_json: bool) -> bool:
    """Write the figures to `output` (atomically) if asked; print them if `as_json`."""
    from orchestrator.files import atomic_write_json

    if output:
        atomic_write_json(output, res)
    if as_json:
        print(json.dumps(res, indent=2))
    return as_json


def _print_table(
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
        pad_edge=not caption,
        collapse_padding=bool(caption),
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


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=2)


@config_app.command("validate")
def config_validate(
    path: Annotated[Path, typer.Argument(help="YAML config file.")],
) -> None:
    """Validate a config file and list its experts."""
    from orchestrator.config import load_config

    try:
        cfg = load_config(path)
    except ConclaveError as e:
        raise _fail(e) from None
    table = Table(title=f"{path}: valid")
    for col in ("expert", "backend", "model", "roles", "memory_gb"):
        table.add_column(col)
    for e in cfg.pool.experts:
        table.add_row(
            e.name,
            e.backend.type,
            getattr(e.backend, "model", "-"),
            ", ".join(r.value for r in e.roles),
            f"{e.resources.memory_gb:g}",
        )
    out.print(table)


@config_app.command("schema")
def config_schema() -> None:
    """Print the config's JSON schema (every field with its description)."""
    from orchestrator.config import ConclaveConfig

    print(json.dumps(ConclaveConfig.model_json_schema(), indent=2))


@pool_app.command("run")
def pool_run(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    prompt: Annotated[
        list[str], typer.Option("--prompt", "-p", help="A user message; repeatable.")
    ],
    expert: Annotated[
        list[str] | None, typer.Option("--expert", "-e", help="Expert to ask (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON lines.")] = False,
) -> None:
    """Ask experts the given prompts as one batch (grouped by expert, each loaded once)."""
    from orchestrator.config import load_config
    from workers.batch import GenerationRequest
    from workers.pool import ExpertPool

    try:
        cfg = load_config(config)
        names = expert or [e.name for e in cfg.pool.experts]
        reqs = [
            GenerationRequest(
                item_id=f"{i}:{n}", expert=n, messages=[{"role": "user", "content": p}]
            )
            for i, p in enumerate(prompt)
            for n in names
        ]
        with ExpertPool(cfg) as pool:
            results = pool.run(reqs, progress=not as_json)
            stats = pool.stats.as_dict()
    except ConclaveError as e:
        raise _fail(e) from None
    if as_json:
        for r in results:
            print(r.model_dump_json())
        return
    table = Table(title=f"{len(results)} answers, {stats['loads']} model loads")
    for col in ("item", "expert", "answer / error"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.item_id, r.expert, r.text if r.ok else f"[red]{r.error.message}[/]")  # type: ignore[union-attr]
    out.print(table)
    if any(not r.ok for r in results):
        raise typer.Exit(code=1)


FiguresJson = Annotated[bool, typer.Option("--json", help="Print the figures as JSON only.")]
FiguresOut = Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")]


@bench_app.command("pool")
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
    from workers.bench import run_pool_bench

    try:
        res = run_pool_bench(
            questions, per_question, models, naive_sample, seed, progress=not as_json
        )
    except (ConclaveError, ValueError) as e:
        raise _fail(e) from None
    if _emit_json(res, output, as_json):
        return
    table = Table(title=f"pool benchmark: {res['requests']} requests over {res['models']} models")
    for col in ("scheduling", "model loads", "wall s"):
        table.add_column(col)
    g, n = res["grouped"], res["naive"]
    table.add_row("grouped, load once", str(g["model_loads"]), str(g["wall_s"]))
    table.add_row(
        "grouped, 2nd batch", str(g["second_batch_model_loads"]), str(g["second_batch_wall_s"])
    )
    table.add_row(
        f"naive ({n['note']})", f"{res['requests']} (est.)", str(n["extrapolated_wall_s"])
    )
    out.print(table)
    out.print(f"speedup: [bold]{res['speedup']}x[/]   failed requests: {res['failed_requests']}")


@bench_app.command("route")
def bench_route(
    questions: Annotated[int, typer.Option(min=1, help="Questions routed warm.")] = 20_000,
    experts: Annotated[int, typer.Option(min=1, help="Experts with profiles.")] = 16,
    cold: Annotated[int, typer.Option(min=1, help="Questions routed with new keywords.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the profiles and keywords.")] = 0,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Recruitment throughput with LLM calls excluded: keyword mapping, scoring, selection."""
    from orchestrator.routing_bench import run_routing_bench

    res = run_routing_bench(questions=questions, experts=experts, cold_questions=cold, seed=seed)
    if _emit_json(res, output, as_json):
        return
    table = Table(
        title=f"routing: {res['experts']} experts, {res['inventory_keywords']} inventory "
        f"keywords ({res['embedder']})"
    )
    for col in ("keywords", "questions", "seconds", "questions/s"):
        table.add_column(col)
    w, c = res["warm"], res["cold"]
    table.add_row(
        "cached (repeat)", str(w["questions"]), str(w["seconds"]), str(w["questions_per_s"])
    )
    table.add_row(
        "all new (cold)", str(c["questions"]), str(c["seconds"]), str(c["questions_per_s"])
    )
    out.print(table)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise typer.BadParameter(f"{text!r}: give positive integers separated by commas, e.g. 1,16")
    return levels


@bench_app.command("gateway")
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
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Gateway latency (p50/p99) and requests/s on loopback: a zero-cost fake expert, and a
    tiny vLLM model through the gateway against vLLM's own OpenAI-compatible server."""
    from orchestrator.gateway_bench import run_gateway_bench

    try:
        res = run_gateway_bench(
            _levels(concurrency),
            requests,
            vllm_requests,
            _levels(vllm_concurrency),
            max_tokens,
            batch_window_ms,
            with_vllm=vllm,
            in_process=in_process,
        )
    except ConclaveError as e:
        raise _fail(e) from None
    if _emit_json(res, output, as_json):
        return
    runs = [("gateway, fake expert", r) for r in res["fake_expert"]]
    if "vllm" in res:
        runs += [("vLLM's own server", r) for r in res["vllm"]["vllm_server"]]
        runs += [("gateway -> vLLM", r) for r in res["vllm"]["gateway_passthrough"]]
    keys = ("concurrency", "requests", "errors", "p50_ms", "p90_ms", "p99_ms", "requests_per_s")
    _print_table(
        f"gateway on loopback ({res['machine']})",
        ("server", "clients", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "requests/s"),
        ((name, *(r[k] for k in keys)) for name, r in runs),
    )
    for c, o in res.get("passthrough_overhead_pct", {}).items():
        out.print(f"passthrough overhead at {c} clients: p50 {o['p50']:+}%, p99 {o['p99']:+}%")


@bench_app.command("free-agents")
def bench_free_agents(
    seeds: Annotated[int, typer.Option(min=1, help="Runs (and control runs), one per seed.")] = 3,
    requests: Annotated[int, typer.Option(min=10, help="Requests in each stream.")] = 2000,
    drop_at: Annotated[int, typer.Option(min=1, help="Request at which the fault hits.")] = 1000,
    incumbent: Annotated[float, typer.Option(help="Incumbent's accuracy before.")] = 0.95,
    degraded: Annotated[float, typer.Option(help="Incumbent's accuracy after.")] = 0.75,
    free_agent: Annotated[float, typer.Option(help="The free agent's accuracy.")] = 0.93,
    probes: Annotated[
        float, typer.Option(min=0.0, max=10.0, help="free_agents.probes_per_task (0: none).")
    ] = 2.0,
    window: Annotated[int, typer.Option(min=1, help="free_agents.window = min_samples.")] = 80,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """The free-agent scenario: an expert degrades mid-stream, the monitor releases it and
    promotes a free agent after probation; a control run without the drop per seed."""
    from agents.free_agents_bench import run_free_agents_bench

    if drop_at >= requests:
        raise _fail(ValueError(f"--drop-at {drop_at} must come before the end (--requests)"))
    for name, v in (("incumbent", incumbent), ("degraded", degraded), ("free-agent", free_agent)):
        if not 0 <= v <= 1:
            raise _fail(ValueError(f"--{name} {v} is not an accuracy between 0 and 1"))
    res = run_free_agents_bench(
        seeds,
        requests,
        drop_at,
        incumbent,
        degraded,
        free_agent,
        probes,
        window,
        progress=not as_json,
    )
    if _emit_json(res, output, as_json):
        return
    _print_table(
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
    )
    out.print(res["summary"])


@bench_app.command("moe")
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
    """The in-model MoE layer: vLLM's fused path vs a per-expert loop vs the reference,
    with the fused path's GFLOP/s next to a dense matmul of the same useful FLOPs."""
    from kernels.bench import run_moe_bench

    if dtype not in ("bfloat16", "float32"):
        raise _fail(ValueError(f"--dtype {dtype!r}: use bfloat16 or float32"))
    if device not in ("cpu", "cuda"):
        raise _fail(ValueError(f"--device {device!r}: use cpu or cuda"))
    try:
        res = run_moe_bench(
            _levels(tokens), hidden, experts, top_k, intermediate, dtype, device, rounds=rounds
        )
    except (ValueError, RuntimeError) as e:
        raise _fail(e) from None
    if _emit_json(res, output, as_json):
        return

    def cells(r: dict[str, Any]) -> tuple[object, ...]:
        ref = r["speedup_vs_reference"]
        return (
            r["tokens"],
            f"{r['fused_ms']:.2f}",
            f"{r['naive_ms']:.2f}",
            r["speedup_vs_naive"],
            r["speedup_vs_naive_best"],
            f"{ref:.0f}" if ref else "-",
            round(r["fused_gflops"]),
            round(r["dense_matmul_gflops"]),
            f"{r['max_abs_error_vs_reference']:.3f}",
            r["machine_drift"],
        )

    _print_table(
        f"MoE layer ({res['device']}, fused = {res['fused_kernel']}, {res['rounds']} rounds)",
        (
            "tokens",
            "fused\nms",
            "loop\nms",
            "x\nloop",
            "x\nbest",
            "x\nref",
            "fused\nGFLOP/s",
            "dense\nGFLOP/s",
            "error",
            "drift",
        ),
        (cells(r) for r in res["rows"]),
        caption="x loop: median of the rounds' paired ratios; x best: the loop's fastest round "
        "over the fused path's; drift: the dense matmul's median round over its fastest",
    )


def _zoo_root(directory: Path | None) -> Path:
    from orchestrator.config import default_cache_dir

    return directory or default_cache_dir() / "zoo"


ZooDir = Annotated[Path | None, typer.Option("--dir", help="Zoo folder (default: <cache>/zoo).")]


def _build_zoo(root: Path, profile: str, seed: int = 0):  # type: ignore[no-untyped-def]
    """Build (or verify) the zoo with a progress bar per model; returns (manifest, built)."""
    from rich.progress import TextColumn

    from agents.zoo.build import PROFILES, ZooBuilder
    from orchestrator.progress import progress_bar

    with progress_bar(24, TextColumn("{task.fields[status]}"), console=err) as bar:
        tasks = {}
        for spec in PROFILES.get(profile, []):
            total = getattr(spec, "steps", None)
            tasks[spec.name] = bar.add_task(spec.name, total=total, status="", start=False)

        def on_event(name: str, what: str) -> None:
            bar.start_task(tasks[name])
            done = what in ("built", "up to date")
            bar.update(tasks[name], status=what, **({"completed": 1, "total": 1} if done else {}))

        def on_step(name: str, step: int, total: int) -> None:
            bar.update(tasks[name], completed=step, total=total)

        return ZooBuilder(root, profile, seed, on_event, on_step).build()


@zoo_app.command("build")
def zoo_build(
    profile: Annotated[str, typer.Option(help="'full', or 'reduced' (tests).")] = "full",
    directory: ZooDir = None,
    seed: Annotated[int, typer.Option(help="skillmix seed of the training data.")] = 0,
) -> None:
    """Build (or verify) the zoo: convert the registry LLMs, train the specialists."""

    from agents.zoo.build import PROFILES

    root = _zoo_root(directory)
    t0 = time.perf_counter()
    try:
        manifest, built = _build_zoo(root, profile, seed)
    except ConclaveError as e:
        raise _fail(e) from None
    table = Table(title=f"zoo '{profile}' at {root} ({time.perf_counter() - t0:.0f} s)")
    for col in ("model", "kind", "architecture", "trained on", "MB", "build s"):
        table.add_column(col)
    for spec in PROFILES[profile]:
        e = manifest.entries[spec.name]
        table.add_row(
            e.name,
            e.kind + (" (new)" if e.name in built else ""),
            e.architecture,
            ", ".join(e.trained_on) or "-",
            f"{e.size_bytes / 2**20:.0f}",
            f"{e.build_s:g}",
        )
    out.print(table)


@zoo_app.command("eval")
def zoo_eval(
    directory: ZooDir = None,
    per_category: Annotated[int, typer.Option(min=1, help="Test questions per category.")] = 50,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only these zoo models.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    output: Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")] = None,
) -> None:
    """Each zoo model's accuracy per skillmix category (test split), and the oracle's."""
    from agents.zoo.build import load_manifest
    from agents.zoo.evaluate import evaluate_zoo, zoo_config

    root = _zoo_root(directory)
    manifest = load_manifest(root, seed=0)
    if not manifest.entries:
        raise _fail(ConclaveError(f"no zoo at {root}; run `conclave zoo build` first"))
    try:
        res = evaluate_zoo(zoo_config(root, manifest, model), per_category, progress=not as_json)
    except ConclaveError as e:
        raise _fail(e) from None
    if _emit_json(res, output, as_json):
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


# ---- eval, profile, route, experts: the facade on a config or the embedded default ------

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config; default: the embedded zoo (built if missing)."
    ),
]
ZooProfile = Annotated[
    str, typer.Option("--zoo", help="Embedded zoo profile when no --config: full or reduced.")
]
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
        "--limit", "-n", min=1, help="Questions per category (skillmix; eval: 10) or rows."
    ),
]
CategoryOpt = Annotated[
    list[str] | None, typer.Option("--category", help="Only this category; repeatable.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the data and the router.")]


def _config(config: Path | None, zoo: str, zoo_dir: Path | None):  # type: ignore[no-untyped-def]
    """The config file's pool, or the embedded zoo's (built first if missing or stale)."""
    if config is not None:
        from orchestrator.config import load_config

        return load_config(config)
    from agents.zoo.evaluate import zoo_config

    root = _zoo_root(zoo_dir)
    manifest, built = _build_zoo(root, zoo)
    if built:
        err.print(f"built zoo models {', '.join(built)} in {root}")
    return zoo_config(root, manifest)


@app.command("eval")
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
            help="Strategy to run; repeatable. Default: best-single, random-k, majority, moa, "
            "symbolic-moe.",
        ),
    ] = None,
    seed: SeedOpt = 0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Run directory; an existing one resumes. Default: <cache>/runs/..."
        ),
    ] = None,
    zoo: ZooProfile = "full",
    zoo_dir: ZooDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json only.")] = False,
) -> None:
    """Evaluate the strategies on a benchmark (the main job).

    Profiles the experts on the validation split (cached), answers the test split with each
    strategy, and writes a run directory: results.jsonl, summary.json, report.md and
    chart.png. A killed run resumes from its run directory (--out).
    """
    from datetime import UTC, datetime

    from evals.harness import DEFAULT_STRATEGIES, EvalSpec, run_eval
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
        cfg = _config(config, zoo, zoo_dir)
        cache = cfg.resolved_cache_dir()
        if output is None:
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            output = cache / "runs" / f"{stamp}-{Path(data).stem}"
        with Conclave(cfg, reuse_answers=True) as c:
            res = run_eval(c, spec, output, cache, progress=not as_json, log=err.print)
    except ConclaveError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        hint = f"; resume with the same command and --out {output}" if output else ""
        err.print(f"interrupted{hint}")
        raise typer.Exit(code=130) from None
    if as_json:
        print(json.dumps(res, indent=2))
        return
    _print_summary(res)
    out.print(
        f"run directory: [bold]{output}[/]  (report.md, summary.json, results.jsonl, chart.png)"
    )


def _print_summary(res: dict) -> None:  # type: ignore[type-arg]
    table = Table(
        title=f"{res['dataset']} {res['split']}: {res['questions']} questions "
        f"({res['wall_s']} s, {res['machine']})",
        caption="calls, experts, reused answers and tokens are per question",
        box=box.SIMPLE_HEAD,  # fits 80 columns without truncating a header
        pad_edge=False,
        collapse_padding=True,
    )
    cols = ("strategy", "acc %", "calls", "experts", "reused", "tokens", "wall s", "loads")
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
            style=style,
        )
    out.print(table)
    out.print(
        f"aggregator: {res['aggregator']}  best single on validation: {res['best_single']}  "
        f"profile: {res['profile']}"
    )


@app.command("profile")
def profile_cmd(
    config: ConfigOpt = None,
    data: DataOpt = "skillmix",
    split: Annotated[str, typer.Option(help="Split profiled (skillmix).")] = "validation",
    limit: LimitOpt = None,
    category: CategoryOpt = None,
    seed: SeedOpt = 0,
    zoo: ZooProfile = "full",
    zoo_dir: ZooDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Profile every expert on a validation set (cached; eval and route reuse it).

    Keywords per question, +1/-1 per keyword per expert, the skill inventory, and the
    aggregator chosen on the aggregation benchmark.
    """
    from evals.datasets import eval_items
    from orchestrator.conclave import Conclave
    from orchestrator.profiling import ensure_profile

    try:
        cfg = _config(config, zoo, zoo_dir)
        items = eval_items(data, split, limit, category, seed)
        with Conclave(cfg) as c:
            folder, reused = ensure_profile(
                c, items, data, cfg.resolved_cache_dir(), progress=not as_json, on_event=err.print
            )
            state = c.state
            top = {
                name: sorted(p.skills.items(), key=lambda kv: -kv[1])[:3]
                for name, p in c.profiles.profiles.items()
            }
    except ConclaveError as e:
        raise _fail(e) from None
    res = {"folder": str(folder), "reused": reused, **state.model_dump(), "top_skills": top}
    if as_json:
        print(json.dumps(res, indent=2))
        return
    table = Table(title=f"profiles from {len(items)} {data} {split} questions ({folder})")
    for col in ("expert", "validation acc %", "top skills (+1/-1 sum)"):
        table.add_column(col)
    for name, acc in state.accuracy.items():
        table.add_row(name, f"{acc:.1f}", ", ".join(f"{k} {v:+g}" for k, v in top.get(name, [])))
    out.print(table)
    scores = ", ".join(f"{k} {v:g}%" for k, v in state.aggregator_scores.items())
    out.print(
        f"aggregator: [bold]{state.aggregator}[/] ({scores}); best single: {state.best_single}"
    )


@app.command("route")
def route_cmd(
    question: Annotated[
        list[str], typer.Option("--explain", "-q", help="Question to route; repeatable.")
    ],
    config: ConfigOpt = None,
    data: DataOpt = "skillmix",
    split: Annotated[str, typer.Option(help="Split profiled (skillmix).")] = "validation",
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    zoo: ZooProfile = "full",
    zoo_dir: ZooDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Explain which experts Symbolic-MoE recruits for a question, and why.

    Prints the question's keywords, their inventory skills, and each expert's S, g and
    weight. Only the keyword model runs; the profile is the cached one.
    """
    from evals.datasets import eval_items
    from orchestrator.conclave import Conclave
    from orchestrator.profiling import ensure_profile
    from orchestrator.types import Item

    try:
        cfg = _config(config, zoo, zoo_dir)
        items = eval_items(data, split, limit, None, seed)
        with Conclave(cfg) as c:
            ensure_profile(
                c, items, data, cfg.resolved_cache_dir(), progress=not as_json, on_event=err.print
            )
            asked = [Item(id=f"q{i}", question=q) for i, q in enumerate(question)]
            decisions = c.route(asked)
    except ConclaveError as e:
        raise _fail(e) from None
    if as_json:
        print(json.dumps([d.model_dump(by_alias=True) for d in decisions], indent=2))
        return
    for q, d in zip(question, decisions, strict=True):
        out.print(f"[bold]{q}[/]")
        out.print(f"  keywords: {', '.join(d.keywords) or '(none)'}")
        out.print(f"  skills:   {', '.join(d.skills) or '(none)'}   rule: {d.rule}")
        table = Table(show_header=True, box=None, padding=(0, 2))
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


@app.command("serve")
def serve_cmd(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (config: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (config: 8000).")] = None,
    data: DataOpt = "skillmix",
    zoo: ZooProfile = "full",
    zoo_dir: ZooDir = None,
    passthrough_only: Annotated[
        bool,
        typer.Option(
            "--passthrough-only",
            help="Serve the experts by name only: no routing profile, no 'conclave' model.",
        ),
    ] = False,
    ray_serve: Annotated[
        bool,
        typer.Option(
            "--ray-serve",
            help="Run as a Ray Serve application on the config's Ray cluster (its proxy "
            "binds host:port; the Serve tab of the Ray dashboard shows it).",
        ),
    ] = False,
    preload: Annotated[
        bool | None,
        typer.Option(
            "--preload/--no-preload",
            help="Load the experts that fit before serving (config: gateway.preload, on).",
        ),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible REST gateway (model 'conclave' or an expert's name).

    Loads the cached routing profile (profiling first if there is none) and the experts
    that fit side by side, then serves /v1/chat/completions, /v1/models, /v1/route,
    /healthz, /readyz and /metrics.
    """
    import uvicorn

    from evals.datasets import eval_items
    from orchestrator.conclave import Conclave
    from orchestrator.gateway import create_app
    from orchestrator.profiling import ensure_profile

    try:
        cfg = _config(config, zoo, zoo_dir)
        given = (("host", host), ("port", port), ("preload", preload))
        settings = cfg.gateway.model_copy(update={k: v for k, v in given if v is not None})
        conclave = Conclave(cfg)
        if not passthrough_only:
            ensure_profile(
                conclave,
                eval_items(data),
                data,
                cfg.resolved_cache_dir(),
                progress=True,
                on_event=err.print,
            )
    except ConclaveError as e:
        raise _fail(e) from None
    auth = "API keys required" if settings.keys() else "no API keys configured"
    where = f"http://{settings.host}:{settings.port}"
    if ray_serve:
        from orchestrator.serve_app import run_on_ray_serve

        conclave.close()  # the replica builds its own facade, from the cached profile
        cfg = cfg.model_copy(update={"gateway": settings})
        err.print(f"deploying on Ray Serve at {where} ({auth}); Ctrl-C stops")
        run_on_ray_serve(cfg, not passthrough_only, data, settings.host, settings.port, True)
        return
    try:
        if settings.preload:
            _preload(conclave)
        err.print(f"serving on {where} ({auth}); Ctrl-C stops")
        uvicorn.run(
            create_app(conclave, settings, ensemble=not passthrough_only),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
    finally:
        conclave.close()


def _preload(conclave: Any) -> None:
    """The experts that fit, loaded before serving; one line says what was not."""
    t0 = time.perf_counter()
    outcome = conclave.pool.preload(progress=True)
    loaded = [n for n, o in outcome.items() if o in ("loaded", "resident")]
    err.print(f"{len(loaded)} of {len(outcome)} experts loaded ({time.perf_counter() - t0:.0f} s)")
    for name, what in outcome.items():
        if name not in loaded:
            err.print(f"  {name}: {what} (loads on demand)", highlight=False)


experts_app = typer.Typer(help="The experts of a config or the embedded zoo.", no_args_is_help=True)
app.add_typer(experts_app, name="experts")


@experts_app.command("list")
def experts_list(
    config: ConfigOpt = None,
    zoo_dir: ZooDir = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            help="Gateway to ask for live status (default: the config's host:port).",
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="CONCLAVE_API_KEY", help="Its API key, if it needs one.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """The experts: backend, model, roles, memory, what the zoo built them from, and live
    status (loaded, requests, errors, batch seconds) from a running gateway."""
    from agents.zoo.build import load_manifest

    try:
        if config is not None:
            from orchestrator.config import load_config

            cfg = load_config(config)
            manifest = None
        else:
            from agents.zoo.evaluate import zoo_config

            root = _zoo_root(zoo_dir)
            manifest = load_manifest(root, seed=0)
            if not manifest.entries:
                raise ConclaveError(
                    f"no zoo at {root}; run `conclave zoo build`, or pass --config FILE"
                )
            cfg = zoo_config(root, manifest)
    except ConclaveError as e:
        raise _fail(e) from None
    url = gateway or f"http://{cfg.gateway.host}:{cfg.gateway.port}"
    live, why = _live_status(url, api_key)
    rows = []
    for e in cfg.pool.experts:
        entry = manifest.entries.get(e.name) if manifest else None
        rows.append(
            {
                "name": e.name,
                "backend": e.backend.type,
                "model": getattr(e.backend, "model", None),
                "roles": [r.value for r in e.roles],
                "memory_gb": e.resources.memory_gb,
                "trained_on": entry.trained_on if entry else None,
                "architecture": entry.architecture if entry else None,
                "live": live[e.name].model_dump() if e.name in live else None,
            }
        )
    if as_json:
        print(json.dumps({"gateway": url, "live": why, "experts": rows}, indent=2))
        return
    table = Table(title=f"{len(rows)} experts; live status from {url}: {why}")
    for col in ("expert", "backend", "architecture", "roles", "trained on", "memory GB"):
        table.add_column(col)
    for col in ("state", "requests", "errors", "batch s"):
        table.add_column(col, justify="right")
    for r in rows:
        lv = r["live"]
        figures = (
            [
                "loaded" if lv["loaded"] else "not loaded",
                str(lv["requests"]),
                str(lv["errors"]),
                str(lv["mean_batch_seconds"] or "-"),
            ]
            if lv
            else ["-"] * 4
        )
        table.add_row(
            r["name"],
            r["backend"],
            r["architecture"] or str(r["model"]),
            ", ".join(r["roles"]),
            ", ".join(r["trained_on"] or []) or "-",
            f"{r['memory_gb']:g}",
            *figures,
        )
    out.print(table)


def _live_status(url: str, api_key: str | None) -> tuple[dict[str, Any], str]:
    """Live status by expert from the gateway at `url`, and what happened asking it."""
    import httpx

    from orchestrator.sdk import ConclaveClient, GatewayClientError

    try:
        with ConclaveClient(url, api_key=api_key, timeout=2.0) as c:
            return {s.name: s for s in c.experts()}, "serving"
    except httpx.HTTPError:
        return {}, "no gateway running there"
    except GatewayClientError as e:
        return {}, f"the gateway answered {e.status}: {e.message}"


kernels_app = typer.Typer(help="Look inside served MoE models.", no_args_is_help=True)
app.add_typer(kernels_app, name="kernels")


@kernels_app.command("profile")
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
    from evals.datasets import eval_items
    from kernels.activations import activation_profile, plot
    from orchestrator.config import default_cache_dir

    try:
        model = model or _zoo_moe(zoo_dir)
        res = activation_profile(
            model, eval_items("skillmix", split, limit=per_category), progress=not as_json
        )
    except (ConclaveError, ValueError, RuntimeError) as e:
        raise _fail(e) from None
    png = plot(res, plot_path or default_cache_dir() / "kernels" / "activation_profile.png")
    res["plot"] = str(png)
    if _emit_json(res, output, as_json):
        return
    for layer in range(res["layers"]):
        _print_table(
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


def _zoo_moe(zoo_dir: Path | None) -> Path:
    from agents.zoo.build import load_manifest

    root = _zoo_root(zoo_dir)
    manifest = load_manifest(root, seed=0)
    moe = [n for n, e in manifest.entries.items() if "Mixtral" in (e.architecture or "")]
    if not moe:
        raise ConclaveError(
            f"no MoE model in the zoo at {root}: run `conclave zoo build`, or pass --model"
        )
    return root / moe[0]


@kernels_app.command("mask")
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
    from evals.datasets import eval_items
    from kernels.masking import masking_study
    from orchestrator.config import default_cache_dir

    try:
        chosen = [int(x) for x in experts.split(",") if x.strip()]
        model = model or _zoo_moe(zoo_dir)
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
    except (ConclaveError, ValueError, RuntimeError) as e:
        raise _fail(e) from None
    if as_json:
        print(json.dumps(res, indent=2))
        return
    cats = sorted(next(iter(res["accuracy"].values())))
    _print_table(  # skills cut to six letters, as in `zoo eval`: the table fits 80 columns
        "per-skill accuracy % with in-model experts switched off",
        ("variant", *(c[:6] for c in cats)),
        ((v, *(f"{acc[c]:g}" for c in cats)) for v, acc in res["accuracy"].items()),
        caption=f"model: {model}",
    )


agents_app = typer.Typer(help="The free-agent monitor.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")


@agents_app.command("history")
def agents_history(
    config: ConfigOpt = None,
    log: Annotated[
        Path | None, typer.Option(help="Audit log (default: the config's, else the cache's).")
    ] = None,
    last: Annotated[int, typer.Option(min=1, help="Show the last N decisions.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """The monitor's decisions: releases, probations, promotions, rejections."""
    from agents.free_agents import AuditLog
    from orchestrator.config import AUDIT_LOG, default_cache_dir

    try:
        if log is None and config is not None:
            from orchestrator.config import load_config

            log = load_config(config).audit_log_path()
        path = log or default_cache_dir() / AUDIT_LOG
        if not path.exists():
            raise ConclaveError(f"no audit log at {path}: the monitor has decided nothing yet")
        entries = AuditLog(path).read()[-last:]
    except (ConclaveError, ValueError) as e:
        raise _fail(e) from None
    if as_json:
        print(json.dumps([e.model_dump() for e in entries], indent=2))
        return
    from datetime import datetime

    table = Table(title=f"last {len(entries)} decisions ({path})")
    for col in ("time", "task", "event", "agent", "incumbent", "reason"):
        table.add_column(col)
    for e in entries:
        when = datetime.fromtimestamp(e.time).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(when, str(e.task), e.event, e.agent, e.incumbent or "-", e.reason)
    out.print(table)


def main() -> None:  # pragma: no cover - console entry for `python -m orchestrator.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
