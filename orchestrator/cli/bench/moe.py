"""`conclave bench moe`: the in-model MoE paths against a dense matmul."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from orchestrator.cli.options import FiguresJson, FiguresOut, levels
from orchestrator.cli.render import emit_json, fail, figures, out, print_table


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
    runs: Annotated[
        int,
        typer.Option(
            min=1, help="Run it this many times and give each figure's range over the runs."
        ),
    ] = 1,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="auto measures its choices again (in every run) instead of reading them "
            "from the machine's cache, and saves the new ones.",
        ),
    ] = False,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """The in-model MoE layer on this CPU: vLLM's fused kernel, the grouped GEMMs, the
    per-expert loop and the path `auto` chose, against a dense matmul of the same
    useful FLOPs and the float32 reference. With --runs N, each figure's range."""
    from kernels.bench import run_moe_bench, steps, summarise
    from orchestrator.progress import progress_bar

    if dtype not in ("bfloat16", "float32"):
        raise fail(ValueError(f"--dtype {dtype!r}: use bfloat16 or float32"))
    if device not in ("cpu", "cuda"):
        raise fail(ValueError(f"--device {device!r}: use cpu or cuda"))
    if top_k > experts:
        raise fail(
            ValueError(
                f"--top-k {top_k}: a token chooses among --experts {experts}; give --top-k "
                f"at most {experts}, or more --experts"
            )
        )
    counts = levels(tokens)
    each = []
    try:
        # on stderr, so --json's stdout stays the figures alone
        with progress_bar(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("bench moe", total=runs * steps(counts, rounds))
            for _ in range(runs):
                each.append(
                    run_moe_bench(
                        counts,
                        hidden,
                        experts,
                        top_k,
                        intermediate,
                        dtype,
                        device,
                        rounds=rounds,
                        fresh=fresh,
                        on_step=lambda: bar.advance(task),
                    )
                )
    except (ValueError, RuntimeError) as exc:
        raise fail(exc) from None
    res = figures(each[0] if runs == 1 else summarise(each))
    if emit_json(res, output, as_json):
        return
    out.print(f"CPU: {res['cpu_line']}; {res['machine']}")
    each_run = res.get("each_run", [res["rows"]])  # one run's rows, or every run's
    dense = " or ".join(sorted({row["dense_dtype"] for rows in each_run for row in rows}))
    over = f", ranges over {runs} runs" if runs > 1 else ""
    print_table(
        f"MoE layer ({res['device']}, fused = {res['fused_kernel']}, {res['rounds']} rounds{over})",
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
        [_moe_cells(r) for r in res["rows"]]
        if runs == 1
        else [row for r in res["rows"] for row in _range_rows(r)],
        caption="x: median of the rounds' paired speed ratios; x dense: against a dense "
        f"matmul doing the same useful FLOPs (in {dense}, the faster here); drift: the "
        "dense matmul's median round over its fastest. --json adds best-of ratios, GFLOP/s "
        "and errors.",
    )
    for n, rows in enumerate(each_run, 1):
        run = f"run {n}, " if runs > 1 else ""
        for r in rows:
            out.print(f"{run}auto at {r['tokens']} tokens: {r['auto_kernel']}, {r['auto_why']}")


#: auto's path in the table's narrow column (the lines under it name the kernel)
_SHORT = {
    "fused:amx": "amx",
    "fused:vec": "vec",
    "fused:triton": "triton",
    "grouped:float32": "grouped f32",
    "grouped:mkl": "grouped mkl",
    "grouped:native": "grouped native",
    "grouped:native-bf16": "grouped native bf16",
    "grouped:native-avx512bf16": "grouped avx512bf16",
    "grouped:native-fma": "grouped fma",
    "grouped:native-fma-bf16": "grouped fma bf16",
    "naive": "loop",
}


def _ms(value: float | None) -> str:
    """A time cell; "-" for a path that cannot run here (vLLM's kernel on some shapes)."""
    return f"{value:.2f}" if value is not None else "-"


def _moe_cells(r: dict[str, Any]) -> tuple[object, ...]:
    return (
        r["tokens"],
        *(_ms(r[k]) for k in ("fused_ms", "grouped_ms", "naive_ms", "auto_ms")),
        _SHORT.get(r["auto_path"], r["auto_path"]),
        r["auto_vs_naive"],
        r["auto_vs_fused"] if r["auto_vs_fused"] is not None else "-",
        r["auto_vs_dense"],
        r["machine_drift"],
    )


def _range_rows(r: dict[str, Any]) -> list[tuple[object, ...]]:
    """A `summarise`d row as two: each figure's lowest over the runs, then its highest
    (as "lo-hi" cells they overflow 80 columns); the paths `auto` chose, with how many
    runs chose each where they differ, beside the first."""
    paths = ", ".join(
        f"{_SHORT.get(p, p)}" + (f" ({n})" if len(r["auto_paths"]) > 1 else "")
        for p, n in r["auto_paths"].items()
    )
    keys = ("fused_ms", "grouped_ms", "naive_ms", "auto_ms")
    ratios = ("auto_vs_naive", "auto_vs_fused", "auto_vs_dense", "machine_drift")
    rows = []
    for i, label in enumerate((f"{r['tokens']} low", "high")):
        ms = (_ms(r[k][i] if r[k] is not None else None) for k in keys)
        figures = (r[k][i] if r[k] is not None else "-" for k in ratios)
        rows.append((label, *ms, paths if i == 0 else "", *figures))
    return rows
