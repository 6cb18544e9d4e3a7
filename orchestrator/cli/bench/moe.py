"""`conclave bench moe`: the in-model MoE paths against a dense matmul."""

from __future__ import annotations

from typing import Annotated, Any

import typer

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
    "grouped:native-avx512bf16": "grouped avx512bf16",
    "grouped:native-fma": "grouped fma",
    "grouped:native-fma-bf16": "grouped fma bf16",
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
