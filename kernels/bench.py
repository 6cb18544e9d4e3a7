"""`conclave bench moe`: the MoE layer's paths, and what `auto` chose, on this CPU.

The paths: vLLM's fused kernel, the grouped oneDNN GEMMs (`kernels.grouped`), the per-
expert loop, and `auto` (the fastest of them by its own measurement, made when it first
met the token count's bucket or read from its cache: `kernels.autotune`), with the CPU's
model and ISA flags, since which path wins depends on them. For each token count, the
same layer (same weights, routing included) runs through each backend, each timed in
blocks of repeated calls; twelve rounds each time every backend at every token count in
rotating order (see `_time_all`); times are medians over rounds, ratios the median of
each round's ratio, so a machine whose speed drifts biases no backend and no token
count. Each speedup is also given best against best (each path's fastest round, the rule
`timeit` documents: slower rounds measure the neighbours, not the code), and each row
says how far the machine drifted during the run: the dense matmul's median round against
its fastest (`machine_drift`; 1.0 is a steady machine). On a shared VM, neighbours slow
the AMX units by up to 2.5x for minutes at a time, and that slows the fused kernel (all
AMX) more than the loop (half framework overhead), so the median speedup falls in a slow
spell while the best-of one holds. The fused path's achieved GFLOP/s counts useful FLOPs
only (top_k experts per token: 6*K*N each, the gate/up and down projections) and is set
next to a dense matmul doing the same FLOPs ([M*top_k, K] x [K, 2N] then [M*top_k, N] x
[N, K]) on the same machine, in the layer's dtype or float32, whichever runs faster here
(bfloat16 on a CPU with AMX; float32 on one without bfloat16 dot products).

Figures vary from run to run on a shared machine, so `summarise` gives each one's range
over several runs (`conclave bench moe --runs N`, with `--fresh` for `auto` measuring
afresh in each, as a first use on the machine would): the form the README's figures take.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from typing import Any

import torch

from kernels.autotune import Choice, ChoiceCache, cpu, cpu_line, time_paths
from kernels.grouped import unavailable
from kernels.moe import KERNELS, MoEConfig, MoELayer


def _time_all(
    fns: dict[str, Callable[[], Any]],
    min_s: float = 0.1,
    min_reps: int = 5,
    blocks: int = 12,
    on_round: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function in each of `blocks` rounds (`time_paths`, with
    longer blocks than `auto` uses). Blocks keep each function's caches warm as in real
    use; rounds give paired figures: on a shared VM, neighbours slow compute-bound
    kernels by up to 2x for seconds at a time, so ratios are taken within a round."""
    return time_paths(fns, rounds=blocks, min_s=min_s, min_reps=min_reps, on_round=on_round)


class _Remeasure(ChoiceCache):
    """The machine's cache of `auto`'s choices, but read as empty: each choice is
    measured again (and saved over the old one), as on a machine's first use."""

    def get(self, key: str) -> Choice | None:
        return None


def steps(tokens: list[int], rounds: int) -> int:
    """The progress steps of one `run_moe_bench`: `auto`'s choice and the errors per
    token count, and the timing rounds."""
    return 2 * len(tokens) + rounds


def _ratio(slow: list[float], fast: list[float]) -> float:
    """The median over rounds of slow/fast, each ratio from one round's adjacent blocks."""
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


def _dense(
    rows: int, k: int, n: int, dt: torch.dtype, device: str, sync: Callable[[], Any]
) -> Callable[[], Any]:
    """A dense matmul pair with the useful FLOPs of `rows` routed tokens, in `dt`."""
    a = torch.randn(rows, k, device=device, dtype=dt)
    w13 = torch.randn(k, 2 * n, device=device, dtype=dt)
    h = torch.randn(rows, n, device=device, dtype=dt)
    w2 = torch.randn(n, k, device=device, dtype=dt)
    return lambda: (a @ w13, h @ w2, sync())


def _dense_dtypes(dt: torch.dtype, device: str) -> list[torch.dtype]:
    """The dtypes the dense baseline is timed in: the layer's, and float32 for a bfloat16
    layer on the CPU, where the faster is the machine's limit (a CPU without bfloat16
    dot products, AVX2-only or AVX-512 without AVX512_BF16, runs bfloat16 matmuls 2-4x
    slower than float32 ones; one with AMX the other way round)."""
    return [dt, torch.float32] if device == "cpu" and dt == torch.bfloat16 else [dt]


def run_moe_bench(
    tokens: list[int],
    hidden: int = 512,
    experts: int = 8,
    top_k: int = 2,
    intermediate: int = 1024,
    dtype: str = "bfloat16",
    device: str = "cpu",
    reference_up_to: int = 2048,
    rounds: int = 12,
    fresh: bool = False,
    on_step: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """One run: each path at each token count, `auto`'s choices (measured again with
    `fresh`), the ratios and errors. `on_step` is called `steps(tokens, rounds)` times.
    Where vLLM's fused kernel cannot run the layer (a hidden width it does not take, no
    vLLM), its figures are None and `fused_kernel` says why: the other paths still run."""
    step = on_step or (lambda: None)
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: give at least 1")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda': this PyTorch sees no CUDA GPU (torch.cuda.is_available() is "
            "False); use device 'cpu', or a machine and PyTorch build with CUDA"
        )
    cfg = MoEConfig(
        hidden=hidden, intermediate=intermediate, experts=experts, top_k=top_k, dtype=dtype
    )
    dt = getattr(torch, dtype)
    probe = torch.zeros(1, hidden, device=device, dtype=dt)
    fused_layer = MoELayer(cfg.model_copy(update={"backend": "fused"}), device=device)
    why_not = fused_layer.fused_unavailable(probe)
    fused = why_not is None
    fused_kernel = fused_layer.kernel_for(probe) if fused else f"unavailable: {why_not}"
    grouped = device == "cpu" and unavailable(torch.device(device), dt) is None
    others = ("grouped",) * grouped + ("naive",)
    paths = ("fused",) * fused + others
    layers = {"fused": fused_layer} if fused else {}
    for b in (*others, "auto", "reference"):
        layers[b] = MoELayer(cfg.model_copy(update={"backend": b}), device=device)
    if fresh:
        layers["auto"].cache = _Remeasure(layers["auto"].cache.path)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    inputs = {
        m: torch.randn(m, hidden, generator=torch.Generator().manual_seed(m)).to(device, dt)
        for m in tokens
    }
    # auto's choice per count first (measured now, or read from its cache on disk)
    choices = {}
    for m, x in inputs.items():
        choices[m] = layers["auto"].choice_for(x)
        step()

    def call(layer: MoELayer, x: torch.Tensor) -> Callable[[], Any]:
        return lambda: (layer(x), sync())

    timed = (*paths, "auto")
    with torch.inference_mode():
        # every token count in every round: a slow spell of the machine (seconds long)
        # falls on a few rounds of each count instead of on all rounds of one
        fns: dict[str, Callable[[], Any]] = {}
        for m, x in inputs.items():
            fns |= {f"{b}@{m}": call(layers[b], x) for b in timed}
            for d in _dense_dtypes(dt, device):
                fns[f"dense:{d}@{m}"] = _dense(m * top_k, hidden, intermediate, d, device, sync)
        times = _time_all(fns, blocks=rounds, on_round=step)
    rows = []
    for m, x in inputs.items():
        t = {b: times[f"{b}@{m}"] for b in timed}
        # the dense baseline in whichever dtype ran faster over the run, round by round
        dense = {d: times[f"dense:{d}@{m}"] for d in _dense_dtypes(dt, device)}
        dense_dt = min(dense, key=lambda d: statistics.median(dense[d]))
        t["dense"] = dense[dense_dt]
        med = {b: statistics.median(v) for b, v in t.items()}
        with torch.inference_mode():
            # the reference alone: its dense float32 work would evict the others' caches
            ref = (
                _time_all({"r": call(layers["reference"], x)}, min_reps=3, blocks=1)["r"][0]
                if m <= reference_up_to
                else None
            )
            truth = layers["reference"](x).float()
            err = {b: float((layers[b](x).float() - truth).abs().max()) for b in timed}
        flops = 6 * m * top_k * hidden * intermediate
        # a figure of vLLM's kernel is None where it cannot run the layer
        row: dict[str, Any] = {
            "tokens": m,
            "fused_ms": round(1000 * med["fused"], 4) if fused else None,
            "naive_ms": round(1000 * med["naive"], 4),
            "grouped_ms": round(1000 * med["grouped"], 4) if grouped else None,
            "auto_ms": round(1000 * med["auto"], 4),
            "auto_path": choices[m].path,
            "auto_kernel": KERNELS[choices[m].path],
            "auto_why": choices[m].why,
            "reference_ms": round(1000 * ref, 4) if ref is not None else None,
            "speedup_vs_naive": round(_ratio(t["naive"], t["fused"]), 2) if fused else None,
            "speedup_vs_naive_best": round(min(t["naive"]) / min(t["fused"]), 2) if fused else None,
            "speedup_vs_reference": round(ref / med["fused"], 2) if fused and ref else None,
            "auto_vs_naive": round(_ratio(t["naive"], t["auto"]), 2),
            "auto_vs_fused": round(_ratio(t["fused"], t["auto"]), 2) if fused else None,
            "auto_vs_dense": round(_ratio(t["dense"], t["auto"]), 2),
            "grouped_vs_dense": round(_ratio(t["dense"], t["grouped"]), 2) if grouped else None,
            "fused_gflops": round(flops / med["fused"] / 1e9, 1) if fused else None,
            "auto_gflops": round(flops / med["auto"] / 1e9, 1),
            "dense_matmul_gflops": round(flops / med["dense"] / 1e9, 1),
            "dense_dtype": str(dense_dt).removeprefix("torch."),
            "fused_vs_dense": round(_ratio(t["dense"], t["fused"]), 2) if fused else None,
            "max_abs_error_vs_reference": round(err["fused"], 5) if fused else None,
            "max_abs_error_by_path": {b: round(e, 5) for b, e in err.items()},
            "machine_drift": round(med["dense"] / min(t["dense"]), 2),
        }
        rows.append(row)
        step()
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}",
        "cpu": cpu(),
        "cpu_line": cpu_line(),
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "config": cfg.model_dump(exclude={"backend"}),
        "fused_backend": fused_layer.backend_for(probe) if fused else None,
        "fused_kernel": fused_kernel,
        "rounds": rounds,
        "rows": rows,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several `run_moe_bench` results of one configuration as one: the machine and
    configuration of the first; per token count, each figure's [lowest, highest] over the
    runs, the paths `auto` chose with how many runs chose each (`auto_paths`), and each
    path's worst error; each run's own rows in `each_run`."""
    first = runs[0]
    rows = []
    for i, row in enumerate(first["rows"]):
        same = [r["rows"][i] for r in runs]
        summary: dict[str, Any] = {"tokens": row["tokens"]}
        for key, value in row.items():
            if key != "tokens" and isinstance(value, int | float) and not isinstance(value, bool):
                got = [r[key] for r in same if r[key] is not None]
                summary[key] = [min(got), max(got)] if got else None
            elif key != "tokens" and value is None:
                summary[key] = None
        paths: dict[str, int] = {}
        for r in same:
            paths[r["auto_path"]] = paths.get(r["auto_path"], 0) + 1
        summary["auto_paths"] = dict(sorted(paths.items(), key=lambda kv: -kv[1]))
        summary["max_abs_error_by_path"] = {
            p: max(r["max_abs_error_by_path"][p] for r in same)
            for p in row["max_abs_error_by_path"]
        }
        rows.append(summary)
    top = {k: v for k, v in first.items() if k != "rows"}
    return {**top, "runs": len(runs), "rows": rows, "each_run": [r["rows"] for r in runs]}
