"""`conclave bench moe`: the fused MoE path against a per-expert loop and the reference.

For each token count, the same layer (same weights, routing included) runs through each
backend; the figure is the median of timed repeats after a warm-up. The fused path's
achieved GFLOP/s counts useful FLOPs only (top_k experts per token: 6*K*N each, the
gate/up and down projections) and is set next to a dense bf16 matmul doing the same
FLOPs ([M*top_k, K] x [K, 2N] then [M*top_k, N] x [N, K]) on the same machine.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from kernels.moe import MoEConfig, MoELayer


def _time(fn: Callable[[], Any], min_s: float = 0.2, min_reps: int = 5) -> float:
    fn()  # warm-up (and prepack)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def _dense(
    rows: int, k: int, n: int, dt: torch.dtype, device: str, sync: Callable[[], Any]
) -> float:
    """Seconds for a dense matmul pair with the useful FLOPs of `rows` routed tokens."""
    a = torch.randn(rows, k, device=device, dtype=dt)
    w13 = torch.randn(k, 2 * n, device=device, dtype=dt)
    h = torch.randn(rows, n, device=device, dtype=dt)
    w2 = torch.randn(n, k, device=device, dtype=dt)
    return _time(lambda: (a @ w13, h @ w2, sync()))


def run_moe_bench(
    tokens: list[int],
    hidden: int = 512,
    experts: int = 8,
    top_k: int = 2,
    intermediate: int = 1024,
    dtype: str = "bfloat16",
    device: str = "cpu",
    reference_up_to: int = 2048,
) -> dict[str, Any]:
    cfg = MoEConfig(hidden=hidden, intermediate=intermediate, experts=experts, top_k=top_k,
                    dtype=dtype)  # fmt: skip
    layers = {b: MoELayer(cfg.model_copy(update={"backend": b}), device=device)
              for b in ("fused", "naive", "reference")}  # fmt: skip
    dt = getattr(torch, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for m in tokens:
        x = torch.randn(m, hidden, generator=torch.Generator().manual_seed(m)).to(device, dt)

        def timed(layer: MoELayer, x: torch.Tensor = x) -> float:
            return _time(lambda: (layer(x), sync()))

        with torch.inference_mode():
            fused = timed(layers["fused"])
            naive = timed(layers["naive"])
            ref = timed(layers["reference"]) if m <= reference_up_to else None
            err = float((layers["fused"](x).float() - layers["reference"](x).float()).abs().max())
            dense = _dense(m * top_k, hidden, intermediate, dt, device, sync)
        flops = 6 * m * top_k * hidden * intermediate
        rows.append(
            {
                "tokens": m,
                "fused_ms": round(1000 * fused, 4),
                "naive_ms": round(1000 * naive, 4),
                "reference_ms": round(1000 * ref, 4) if ref is not None else None,
                "speedup_vs_naive": round(naive / fused, 2),
                "speedup_vs_reference": round(ref / fused, 2) if ref is not None else None,
                "fused_gflops": round(flops / fused / 1e9, 1),
                "dense_matmul_gflops": round(flops / dense / 1e9, 1),
                "fused_vs_dense": round(dense / fused, 2),
                "max_abs_error_vs_reference": round(err, 5),
            }
        )
    fused_backend = layers["fused"].backend_for(torch.zeros(1, hidden, device=device, dtype=dt))
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}",
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "config": cfg.model_dump(exclude={"backend"}),
        "fused_backend": fused_backend,
        "rows": rows,
    }
