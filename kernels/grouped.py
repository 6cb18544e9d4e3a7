"""The MoE layer's "grouped" path: tokens sorted by expert, each expert's FFN as oneDNN GEMMs.

Where vLLM's CPU kernel is slow (its portable "vec" kernel on CPUs without AMX ran at
0.34-0.42 of a dense matmul's throughput from 16 tokens up, on a 2-core AMD EPYC), this
path keeps the work in the GEMMs PyTorch's oneDNN already runs near the machine's peak:

- the routed (token, slot) pairs are sorted by expert once, so each expert's tokens are
  one contiguous block (one gather, no per-expert nonzero() scan);
- each expert's gate, up and down projections are oneDNN linears on weights reordered
  into oneDNN's blocked layout once per layer (`pack`, again only when the weights
  change), not on every call as a plain `x @ w.t()` does;
- the activation is fused into the GEMMs' epilogues: the gate projection applies SiLU
  ("swish"), the up projection multiplies by it ("mul"), and the down projection
  multiplies by each row's routing weight, so no [tokens, N] intermediate is read
  again;
- each expert's rows are added into a float32 output at their tokens (top-k adds per
  token, so the sum is exact to float32).

Runs on the CPU for bfloat16 and float32 wherever PyTorch was built with oneDNN (its
x86 and aarch64 wheels are); tested against the reference like the other paths.
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


@dataclass(frozen=True)
class Packed:
    """One layer's expert weights in oneDNN's layout: per expert (gate, up, down)."""

    experts: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]
    dtype: torch.dtype


def pack(w13: torch.Tensor, w2: torch.Tensor, dtype: torch.dtype) -> Packed:
    """w13 [E,2N,K] (gate rows, then up rows), w2 [E,K,N] in oneDNN's blocked layout."""
    reorder = torch.ops.mkldnn._reorder_linear_weight
    n = w2.shape[-1]
    experts = []
    for e in range(w13.shape[0]):
        gate, up = w13[e, :n].to(dtype).contiguous(), w13[e, n:].to(dtype).contiguous()
        down = w2[e].to(dtype).contiguous()
        experts.append((reorder(gate, None), reorder(up, None), reorder(down, None)))
    return Packed(tuple(experts), dtype)


def grouped_moe(
    x: torch.Tensor, packed: Packed, weights: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """sum_k weights[m,k] * FFN_ids[m,k](x[m]), float32 [M,K]. `ids` in 0..E-1."""
    linear = torch.ops.mkldnn._linear_pointwise
    m, k = ids.shape
    flat = ids.reshape(-1)
    order = flat.argsort(stable=True)  # (token, slot) pairs, each expert's in one block
    counts = torch.bincount(flat, minlength=len(packed.experts)).tolist()
    tokens = order // k
    xs = x.index_select(0, tokens).to(packed.dtype)
    ws = weights.reshape(-1).index_select(0, order).to(packed.dtype).unsqueeze(1)
    out = torch.zeros(m, x.shape[1], dtype=torch.float32, device=x.device)
    start = 0
    for (gate, up, down), count in zip(packed.experts, counts, strict=True):
        if not count:
            continue
        end = start + count
        xe = xs[start:end]
        act = linear(xe, gate, None, "swish", [], "")  # silu(x W_gate)
        act = linear.binary(xe, act, up, None, "mul")  # (x W_up) * silu(x W_gate)
        y = linear.binary(act, ws[start:end].expand(count, out.shape[1]), down, None, "mul")
        out.index_add_(0, tokens[start:end], y.float())
        start = end
    return out
