"""The MoE layer's "grouped" path: tokens sorted by expert, each expert's FFN as GEMMs.

Where vLLM's CPU kernel is slow (its portable "vec" kernel on CPUs without AMX ran at
0.34-0.42 of a dense matmul's throughput from 16 tokens up, on a 2-core AMD EPYC), this
path keeps the work in GEMMs that PyTorch's libraries already run near the machine's peak:

- the routed (token, slot) pairs are sorted by expert once, so each expert's tokens are
  one contiguous block (one gather, no per-expert nonzero() scan);
- each expert's gate and up projections are one GEMM (N = 2 x intermediate: one call and
  one pass over the tokens instead of two), its down projection another, on weights
  packed once per layer (`pack`, again only when the weights change), not on every call
  as a plain `x @ w.t()` does: in oneDNN's blocked layout, or in MKL's packed format;
- SiLU(gate) * up runs on that output while it is still in cache (an expert's block at
  a time, or a piece of it: `MKL_ROWS`);
- the routing weights multiply all the experts' rows at once and one scatter adds them
  into the output at their tokens (against a weight in the down projection's epilogue
  and a scatter per expert, oneDNN float32, paired rounds on an Intel Xeon, model 106,
  2026-12-01, two runs: 1.03-1.07x at 128 tokens, 1.05-1.22x at 512, 1.04-1.06x at 2048).
  With top-2 (or top-1) routing the output is accumulated in the dtype computed in:
  each token gets at most two rows, and adding two bfloat16 rows rounds once, as a
  float32 sum rounded at the end does; with more the sum is kept in float32.

The variants (`variants`), each measured by `auto`:
- "grouped": oneDNN in the layer's dtype. oneDNN's bfloat16 GEMMs need AVX-512 (BW, VL,
  DQ) or AVX-NE-CONVERT (on an AMD EPYC with AVX2 only they raise), and run at full
  speed only with bfloat16 dot products (AMX, AVX512_BF16): on an Intel Xeon with
  AVX-512 but neither they are emulated (a bfloat16 matmul at 54-56 GFLOP/s against
  float32's 177-212).
- "grouped:float32": oneDNN in float32 for a bfloat16 layer, its weights packed in
  float32 once (twice their size, made only where memory allows: `MoELayer`), its tokens
  cast in and out; 2.1-3.7x the bfloat16 variant on that Xeon.
- "grouped:mkl": float32 on MKL's packed sgemm (`cblas_sgemm_compute`, through the op
  Inductor runs float32 linears on), where PyTorch has MKL (its x86 wheels). On that
  Xeon, eight 128-row GEMMs ran at 0.94 of one dense GEMM over all their rows on MKL's
  packing against 0.80 on oneDNN's; the float32 layer, two runs: 0.76-0.77 of the dense
  matmul's throughput at 512 tokens and 0.87-0.90 at 2048, where oneDNN made 0.65-0.71
  and 0.84-0.88 (1.16-1.23x, 1.21-1.29x and 1.07-1.09x it at 128, 512 and 2048 tokens).
- "grouped:native": the same MKL GEMMs in a kernel compiled on the machine
  (`kernels.native`): every expert's FFN in one call, SiLU * up * routing weight in one
  vectorized pass, the pieces spread over the threads. On that Xeon, paired scripts,
  2026-12-02: 0.87-0.90 of the dense matmul at 512 tokens and 1.03-1.06 at 2048 (the
  dense GEMMs pack their weights and write a 32 MB intermediate on every call), where
  "grouped:mkl" made 0.74-0.81 and 0.80-0.92. Where it builds it replaces "grouped:mkl"
  among `auto`'s candidates (the same GEMMs, less around them).
- "grouped:native-bf16": the kernel on MKL's bfloat16 GEMMs (`cblas_gemm_bf16bf16f32`),
  for a bfloat16 layer, on its weights as they are: no float32 copy (so it stays where
  memory is short for one), and bfloat16 dot products where the CPU has them (AMX,
  AVX512_BF16). On that Xeon, without them, MKL's bfloat16 GEMM ran at 192 GFLOP/s where
  PyTorch's (oneDNN, emulated) made 56, and the layer at 0.61-0.64 of the float32 dense
  matmul at 512 tokens (0.73-0.77x "grouped:native", 3.5x the oneDNN bfloat16 variant).
- "grouped:native-avx512bf16": the kernel on its own bfloat16 GEMMs (AVX512_BF16 dot
  products on weights packed once in VNNI order, a copy their size), for a bfloat16
  layer where the CPU has them. MKL's bfloat16 GEMM takes a slow path on AMD CPUs: on an
  AMD EPYC (family 26, AVX512_BF16, no AMX, 2026-12-02) "grouped:native-bf16" ran 512
  tokens in 19-25 ms and oneDNN's "grouped" in 5.6-8.0, where this form ran it in
  4.5-6.3 (0.89-0.92 of the dense bfloat16 matmul's throughput in `conclave bench moe`,
  0.93-0.99 at 2048 tokens): SiLU * up from the GEMM's registers, each token's rows
  summed inside, routing's bookkeeping in the kernel too (`Kernel.moe`).
- "grouped:native-fma": the kernel on its own float32 GEMMs in the CPU's widest FMA
  vectors (AVX-512 or AVX2), on weights it packs in float32: MKL's float32 GEMMs take a
  slow path on AMD CPUs too. For a float32 layer.
- "grouped:native-fma-bf16": the same GEMMs for a bfloat16 layer, on its weights packed
  in bfloat16 (a copy their size, not a float32 one twice it) and widened to float32 in
  registers, exactly: the same answers as "grouped:native-fma" on a float32 copy. On an
  AMD EPYC (Zen 4, 2026-12-03, three paired runs, 8 experts top-2, hidden 512,
  intermediate 1,024) half the weight traffic ran 1 token 1.35-1.65x and 16 tokens
  1.62-2.00x as fast (built for AVX2: 1.02-1.12x and 1.73-1.78x), 128-2048 tokens
  1.01-1.16x: where there are no bfloat16 dot products (AVX2 only, or AVX-512 without
  AVX512_BF16) the bfloat16 layer's fast path without a float32 copy.

Runs on the CPU for bfloat16 and float32 wherever PyTorch was built with oneDNN (its
x86 and aarch64 wheels are); tested against the reference like the other paths.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from kernels import native
from kernels.native import pieces


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


def variants(dtype: torch.dtype) -> list[str]:
    """The grouped paths that can run a `dtype` layer here, the forced one first: oneDNN
    in the layer's dtype ("grouped"); for bfloat16 also oneDNN in float32
    ("grouped:float32": its weights packed in float32 once, its tokens cast in and out,
    the faster where bfloat16 GEMMs are emulated); and float32 on MKL's packed sgemm
    ("grouped:mkl") where PyTorch has it (its x86 wheels), or the same GEMMs in the
    compiled kernel ("grouped:native", `kernels.native`) where it builds; with it, for
    bfloat16, also MKL's bfloat16 GEMMs on the weights as they are ("grouped:native-bf16":
    no float32 copy, and bfloat16 dot products where the CPU has them) and, where the CPU
    has AVX512_BF16, the kernel's own bfloat16 GEMMs ("grouped:native-avx512bf16"); and
    its own float32 GEMMs in the CPU's FMA vectors ("grouped:native-fma": MKL's float32
    GEMMs take a slow path on AMD CPUs), for bfloat16 on the weights as bfloat16
    ("grouped:native-fma-bf16": the same answers, half the weight traffic)."""
    names = [path_for(compute_dtype(dtype), dtype)]
    if dtype == torch.bfloat16 and bf16_gemms():
        names.append(path_for(torch.float32 if names[0] == "grouped" else dtype, dtype))
    if dtype in (torch.bfloat16, torch.float32) and mkl_sgemm():
        # the compiled kernel runs the very GEMMs "grouped:mkl" runs, without its ATen
        # calls per piece: where it builds, timing both would only cost `auto` time
        kernel = native.kernel()
        names.append("grouped:native" if kernel is not None else "grouped:mkl")
        if dtype == torch.bfloat16 and kernel is not None and kernel.bf16:
            names.append("grouped:native-bf16")  # no float32 copy of the experts
        if dtype == torch.bfloat16 and kernel is not None and kernel.vnni:
            names.append("grouped:native-avx512bf16")
        if dtype == torch.bfloat16 and kernel is not None and kernel.fma_bf16:
            # float32 FMAs on the bfloat16 weights: the answers of a float32 copy twice
            # their size, and no slower in any run measured, so that one is not timed
            names.append("grouped:native-fma-bf16")
        elif kernel is not None and kernel.fma:
            names.append("grouped:native-fma")  # float32 where MKL's GEMMs are slow
    return names


def path_for(compute: torch.dtype, dtype: torch.dtype) -> str:
    """The oneDNN grouped path's name for computing a `dtype` layer in `compute`."""
    return "grouped" if compute == dtype else f"grouped:{str(compute).removeprefix('torch.')}"


def spec(path: str, dtype: torch.dtype) -> tuple[torch.dtype, str]:
    """(compute dtype, engine) of grouped `path` on a `dtype` layer."""
    _, _, tail = path.partition(":")
    if tail in ("mkl", "native"):
        return torch.float32, tail
    if tail in ("native-fma", "native-fma-bf16"):
        return torch.float32, "native"
    if tail in ("native-bf16", "native-avx512bf16"):
        return torch.bfloat16, "native"
    return (getattr(torch, tail) if tail else dtype), "onednn"


def stored(path: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype grouped `path` keeps a `dtype` layer's experts in (packed once): its
    compute dtype, but for "grouped:native-fma-bf16" (float32 FMAs on bfloat16 weights)."""
    return dtype if path == "grouped:native-fma-bf16" else spec(path, dtype)[0]


@functools.cache
def mkl_sgemm() -> bool:
    """PyTorch's MKL packed sgemm (`torch.ops.mkl._mkl_linear`, what Inductor runs float32
    linears on) is here and, on weights packed once, gives what `F.linear` gives for row
    counts other than the one they were packed for (`pack` relies on that: one packing
    per expert, whatever its tokens)."""
    if not (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")):
        return False
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g)
    try:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, MKL_ROWS)
        for m in (1, 37, MKL_ROWS, MKL_ROWS + 3):
            a = torch.randn(m, 64, generator=g)
            got = _mkl_linear(a, packed, _shape_of(w))
            if not torch.allclose(got, a @ w.t(), rtol=1e-4, atol=1e-4):
                return False
    except RuntimeError:
        return False
    return True


def _shape_of(w: torch.Tensor) -> torch.Tensor:
    """A stand-in for `_mkl_linear`'s unpacked float32 weight: it reads only its shape and
    dtype when the rows it is given are the rows it is told (always, here), so no copy."""
    return torch.empty_strided(tuple(w.shape), (0, 0), dtype=torch.float32)


def _mkl_linear(a: torch.Tensor, packed: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """a [M,K] @ the packed [N,K] weight's transpose, on MKL's `cblas_sgemm_compute`:
    `_mkl_linear` computes on the packed weight when told the call's own row count."""
    return torch.ops.mkl._mkl_linear(a, packed, shape, None, a.shape[0])


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
    """One layer's expert weights packed for one GEMM library: per expert (gate and up,
    down), in oneDNN's blocked layout or MKL's packed format."""

    experts: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    dtype: torch.dtype
    intermediate: int
    #: MKL's stand-ins for the unpacked (gate and up, down) weights: their shapes only
    shapes: tuple[torch.Tensor, torch.Tensor] | None = None
    #: the most rows one GEMM call gets (0: an expert's whole block)
    block: int = 0
    #: the compiled kernel's (gate and up, down) weight addresses, int64 [E] each
    addresses: tuple[torch.Tensor, torch.Tensor] | None = None
    #: the compiled kernel's form (`native.FLOAT32`, `BF16_MKL`, `BF16_VNNI`, `F32_FMA`, ...)
    form: int = native.FLOAT32


#: The rows MKL packs each expert's weights for, and the most one GEMM call gets (an
#: expert's block is cut into equal pieces of at most this many). MKL's speed follows
#: the row count it packs for: on an Intel Xeon (model 106, 2026-12-01) 128-row calls ran
#: 1.2x faster on weights packed for 128 rows than for 1; the layer (paired scripts) at
#: 512 tokens, 128 rows an expert, ran at 0.70-0.81 of the dense matmul packed for
#: 256-384 rows, 0.70-0.72 for 128 and 0.56-0.61 for 512-1,024, and at 2048 tokens at
#: 0.84-0.94 for 256-384.
MKL_ROWS = 256


#: The compiled kernel's forms on GEMMs of its own, by path.
OWN_GEMMS = {
    "grouped:native-avx512bf16": native.BF16_VNNI,
    "grouped:native-fma": native.F32_FMA,
    "grouped:native-fma-bf16": native.F32_FMA_BF16,
}


def pack(w13: torch.Tensor, w2: torch.Tensor, path: str) -> Packed:
    """w13 [E,2N,K] (gate rows, then up rows), w2 [E,K,N] packed for grouped `path` (one
    of `variants(w13.dtype)`), once per layer."""
    dtype, engine = spec(path, w13.dtype)
    if engine == "native":
        k = native.kernel()
        if k is None:
            raise RuntimeError(f"{path} cannot run here: {native.unavailable()}")
        width = w2.shape[-1]
        if path in OWN_GEMMS:  # its own GEMMs, on weights it packs
            form, width = OWN_GEMMS[path], native.vnni_width(width)
            experts = tuple(k.pack_expert(w13[e], w2[e], form) for e in range(w13.shape[0]))
        elif dtype == torch.bfloat16:  # MKL's bfloat16 GEMMs take the weights as they are
            form = native.BF16_MKL
            w13, w2 = w13.contiguous(), w2.contiguous()
            experts = tuple((w13[e], w2[e]) for e in range(w13.shape[0]))
        else:
            form = native.FLOAT32
            experts = tuple(
                (k.pack(w13[e], MKL_ROWS), k.pack(w2[e], MKL_ROWS)) for e in range(w13.shape[0])
            )
        addresses = tuple(
            torch.tensor([p[i].data_ptr() for p in experts], dtype=torch.int64) for i in (0, 1)
        )
        return Packed(experts, dtype, width, block=MKL_ROWS, addresses=addresses, form=form)
    if engine == "mkl":
        reorder = functools.partial(torch.ops.mkl._mkl_reorder_linear_weight, batch_size=MKL_ROWS)
        shapes = (_shape_of(w13[0]), _shape_of(w2[0]))
        block = MKL_ROWS
    else:
        reorder = functools.partial(torch.ops.mkldnn._reorder_linear_weight, batch_size=None)
        shapes, block = None, 0
    experts = tuple(
        (reorder(w13[e].to(dtype).contiguous()), reorder(w2[e].to(dtype).contiguous()))
        for e in range(w13.shape[0])
    )
    return Packed(experts, dtype, w2.shape[-1], shapes, block)


def grouped_moe(
    x: torch.Tensor, packed: Packed, weights: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """sum_k weights[m,k] * FFN_ids[m,k](x[m]), [M,K]: in `packed.dtype` for top-1 and
    top-2, else float32 (the caller casts it to the layer's dtype). `ids` in 0..E-1."""
    m, k = ids.shape
    acc = packed.dtype if k <= 2 else torch.float32  # two rows add with one rounding
    if not m:
        return torch.zeros(m, x.shape[1], dtype=acc, device=x.device)
    n = packed.intermediate
    if packed.addresses is not None:  # the compiled kernel: the sort by expert, every
        kernel = native.kernel()  # expert's FFN and each token's sum, in two calls
        assert kernel is not None  # it packed these weights
        out = torch.empty(m, x.shape[1], dtype=acc, device=x.device)
        xc = x.to(packed.dtype)
        return kernel.moe(xc, ids, weights, *packed.addresses, n, packed.form, packed.block, out)
    flat = ids.reshape(-1)
    order = flat.argsort(stable=True)  # (token, slot) pairs, each expert's in one block
    counts = torch.bincount(flat, minlength=len(packed.experts)).tolist()
    tokens = order // k
    xs = x.index_select(0, tokens).to(packed.dtype)
    silu = torch.nn.functional.silu
    if packed.shapes is not None:  # packed for MKL
        gate_up_shape, down_shape = packed.shapes

        def gate_up(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return _mkl_linear(a, w, gate_up_shape)

        def down(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return _mkl_linear(a, w, down_shape)

    else:
        linear = torch.ops.mkldnn._linear_pointwise

        def gate_up(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return linear(a, w, None, "none", [], "")

        down = gate_up
    ys = []
    for a, rows, e in pieces(counts, packed.block or max(counts)):
        w13, w2 = packed.experts[e]
        h = gate_up(xs[a : a + rows], w13)  # [rows, 2N]
        ys.append(down(silu(h[:, :n]).mul_(h[:, n:]), w2))  # silu(x W_gate) * (x W_up) W_down
    # the routing weights and the scatter once over all rows, not once per expert
    y = torch.cat(ys).mul_(weights.reshape(-1).index_select(0, order).to(packed.dtype)[:, None])
    out = torch.zeros(m, x.shape[1], dtype=acc, device=x.device)
    return out.index_add_(0, tokens, y.to(acc))
