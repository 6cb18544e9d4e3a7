"""`conclave bench gateway`: the gateway against vLLM's own server, and the routed model."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.options import FiguresJson, FiguresOut, levels
from orchestrator.cli.render import emit_json, fail, figures, out, print_table
from orchestrator.errors import ConclaveError


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
