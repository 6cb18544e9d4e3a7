"""The MoE layer's "grouped" path: tokens sorted by expert, each expert's FFN as oneDNN GEMMs.

Where vLLM's CPU kernel is slow (its portable "vec" kernel on CPUs without AMX ran at
0.34-0.42 of a dense matmul's throughput from 16 tokens up, on a 2-core AMD EPYC), this
path keeps the work in the GEMMs PyTorch's oneDNN already runs near the machine's peak:

- the routed (token, slot) pairs are sorted by expert once, so each expert's tokens are
  one contiguous block (one gather, no per-expert nonzero() scan);
- each expert's gate and up projections are one oneDNN linear (N = 2 x intermediate: one
  call and one pass over the tokens instead of two), its down projection another, on
  weights reordered into oneDNN's blocked layout once per layer (`pack`, again only
  when the weights change), not on every call as a plain `x @ w.t()` does;
- SiLU(gate) * up runs in place on the first half of that output, and the down
  projection multiplies by each row's routing weight in its epilogue;
- each expert's rows are added into the output at their tokens. With top-2 (or top-1)
  routing the output is accumulated in the layer's dtype: each token gets at most two
  bfloat16 rows, and adding two of them rounds once, as a float32 sum rounded at the end
  does; with more the sum is kept in float32.

Measured against the earlier form of this path (gate and up as two linears with SiLU and
the product fused into their epilogues, a float32 sum always), paired rounds with
`kernels.autotune.time_paths` on a 2-core AMD EPYC, 2026-12-01: 1.04-1.06x at 128
tokens, 1.01-1.03x at 512, 0.98-1.03x at 2048 (the activation's extra pass over [rows, 2N]
costs more once blocks are large).

Runs on the CPU for bfloat16 and float32 wherever PyTorch was built with oneDNN (its
x86 and aarch64 wheels are); tested against the reference like the other paths. A
bfloat16 layer can run it in bfloat16 or in float32 (`variants`: its weights packed in
float32 once, its tokens cast in and out), and `auto` measures both: oneDNN's bfloat16
GEMMs need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT (on an AMD EPYC with AVX2 only they
raise), and run at full speed only with bfloat16 dot products (AMX, AVX512_BF16): on an
Intel Xeon with AVX-512 but neither (2026-12-01) they are emulated, and this path ran
2.1-3.7x faster in float32: at 0.60-0.73 of a float32 dense matmul's throughput at 512
tokens and 0.79-0.88 at 2048, where vLLM's portable kernel ran at 0.48-0.64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the grouped path cannot run `dtype` on `device`; None when it can."""
    if device.type != "cpu":
        return f"the grouped path runs on the CPU (not {device.type})"
    if dtype not in (torch.bfloat16, torch.float32):
        return f"the grouped path runs bfloat16 or float32 (not {dtype})"
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return "this PyTorch build has no oneDNN linear ops"
    return None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the grouped path computes a `dtype` layer in when forced (`backend=
    "grouped"`): its own, or float32 for bfloat16 where this CPU has no bfloat16 dot
    products (`native_bf16`). `auto` measures every variant (`variants`) instead."""
    if dtype == torch.bfloat16 and not (bf16_gemms() and native_bf16()):
        return torch.float32
    return dtype


def variants(dtype: torch.dtype) -> list[torch.dtype]:
    """The dtypes the grouped path can compute a `dtype` layer in here, `compute_dtype`'s
    first: a bfloat16 layer also in float32 (its weights packed in float32 once, its
    tokens cast in and out), which on CPUs that only emulate bfloat16 GEMMs is the
    faster of the two."""
    if dtype != torch.bfloat16:
        return [dtype]
    runs = [torch.bfloat16, torch.float32] if bf16_gemms() else [torch.float32]
    first = compute_dtype(dtype)
    return [first, *(d for d in runs if d != first)]


def bf16_gemms() -> bool:
    """oneDNN runs bfloat16 GEMMs on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


#: CPU flags of bfloat16 dot-product instructions: without them oneDNN emulates bfloat16
#: GEMMs (converting to float32 inside the kernel).
NATIVE_BF16 = ("amx_bf16", "avx512_bf16", "avx_ne_convert", "bf16")


def native_bf16() -> bool:
    """This CPU multiplies bfloat16 natively (AMX, AVX512_BF16, AVX-NE-CONVERT, Arm BF16).
    An AVX-512 CPU without them (an Intel Xeon, model 106, seen 2026-12-01) passes
    `bf16_gemms`, but there its bfloat16 matmul ran at 54-56 GFLOP/s against float32's
    177-212; a CPU whose flags cannot be read is trusted to oneDNN's own check."""
    from kernels.autotune import cpu

    flags = cpu()["flags"]
    return not flags or any(f in flags for f in NATIVE_BF16)


@dataclass(frozen=True)
class Packed:
    """One layer's expert weights in oneDNN's layout: per expert (gate and up, down)."""

    experts: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    dtype: torch.dtype
    intermediate: int


def pack(w13: torch.Tensor, w2: torch.Tensor, dtype: torch.dtype) -> Packed:
    """w13 [E,2N,K] (gate rows, then up rows), w2 [E,K,N] in oneDNN's blocked layout, to
    compute in `dtype` (one of `variants(layer dtype)`)."""
    reorder = torch.ops.mkldnn._reorder_linear_weight
    experts = tuple(
        (
            reorder(w13[e].to(dtype).contiguous(), None),
            reorder(w2[e].to(dtype).contiguous(), None),
        )
        for e in range(w13.shape[0])
    )
    return Packed(experts, dtype, w2.shape[-1])


def grouped_moe(
    x: torch.Tensor, packed: Packed, weights: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """sum_k weights[m,k] * FFN_ids[m,k](x[m]), [M,K]: in `packed.dtype` for top-1 and
    top-2, else float32 (the caller casts it to the layer's dtype). `ids` in 0..E-1."""
    linear = torch.ops.mkldnn._linear_pointwise
    silu = torch.nn.functional.silu
    m, k = ids.shape
    n = packed.intermediate
    flat = ids.reshape(-1)
    order = flat.argsort(stable=True)  # (token, slot) pairs, each expert's in one block
    counts = torch.bincount(flat, minlength=len(packed.experts)).tolist()
    tokens = order // k
    xs = x.index_select(0, tokens).to(packed.dtype)
    ws = weights.reshape(-1).index_select(0, order).to(packed.dtype).unsqueeze(1)
    acc = packed.dtype if k <= 2 else torch.float32  # two rows add with one rounding
    out = torch.zeros(m, x.shape[1], dtype=acc, device=x.device)
    start = 0
    for (gate_up, down), count in zip(packed.experts, counts, strict=True):
        if not count:
            continue
        end = start + count
        h = linear(xs[start:end], gate_up, None, "none", [], "")  # [count, 2N]
        act = silu(h[:, :n]).mul_(h[:, n:])  # silu(x W_gate) * (x W_up)
        y = linear.binary(act, ws[start:end].expand(count, out.shape[1]), down, None, "mul")
        out.index_add_(0, tokens[start:end], y.to(acc))
        start = end
    return out
