"""The grouped MoE path's compiled kernel (`csrc/grouped_ffn.c`): built here, on first use.

The grouped path runs each expert's FFN as MKL GEMMs on weights packed once. Through
PyTorch ops that costs, per piece of an expert's tokens, three or four ATen calls, each
allocating its output (on an Intel Xeon, model 106: the same eight MKL GEMMs 1.5x
slower through `torch.ops.mkl._mkl_linear` than called directly), and SiLU(gate) * up as
two passes over memory. The kernel runs every expert's FFN in one call: the GEMMs on
MKL's packed sgemm, SiLU * up * routing weight in one vectorized pass over a scratch
buffer still in cache, the pieces spread over PyTorch's OpenMP threads. The layer ran
512 tokens at 0.87-0.90 of a dense matmul's throughput where the ATen-op path ran at
0.74-0.81 (paired scripts, float32 GEMMs, 2026-12-02). A bfloat16 form runs MKL's
bfloat16 GEMMs on a bfloat16 layer's weights as they are (`Kernel.bf16`), and another,
where the CPU has AVX512_BF16, the file's own bfloat16 GEMM on weights packed in VNNI
order (`Kernel.vnni`): MKL's bfloat16 GEMM takes a slow path on AMD CPUs (the layer at
0.23 of a dense matmul on an AMD EPYC with AVX512_BF16, 2026-12-02, where this form made
0.89-0.92 at 512 tokens and 0.93-0.99 at 2048). A float32 form runs the file's own GEMMs
in the CPU's widest FMA vectors on weights it packed (`Kernel.fma`): MKL's float32 GEMMs
are slow on AMD CPUs too. `Kernel.moe` does routing's bookkeeping
(the sort by expert, the gathers, the table of GEMM calls) in the kernel as well.

It is compiled on the machine, not shipped (`kernels.build`: about a second, once per
machine and PyTorch, cached). Before the MoE layer's `auto` may weigh it, `kernel()` runs
a small FFN through each form and compares with PyTorch's answer; a build or a check
that fails leaves it out, with the reason logged and in `unavailable()`, and the layer
runs on the other paths.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import shutil
import subprocess
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from kernels.build import SOURCE, Built, Unavailable, build

log = logging.getLogger(__name__)

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p

#: `Kernel.ffn`'s forms: float32 x on weights packed by `Kernel.pack` (MKL's packed
#: sgemm); bfloat16 x on the weights as they are (MKL's bfloat16 GEMMs); bfloat16 x on
#: weights packed by `Kernel.pack_vnni` (the kernel's own AVX512_BF16 GEMMs); float32 x
#: on weights packed by `Kernel.pack_f32` (the kernel's own FMA GEMMs); the same GEMMs on
#: bfloat16 weights packed by `Kernel.pack_f32_bf16`, widened to float32 in registers
FLOAT32, BF16_MKL, BF16_VNNI, F32_FMA, F32_FMA_BF16 = 0, 1, 2, 3, 4


class Routed(NamedTuple):
    """`Kernel.route`'s result: the rows sorted by expert, ready for `Kernel.ffn`."""

    #: [T*topk, k] the inputs in expert order
    xs: torch.Tensor
    #: [T*topk] float32 their routing weights
    w: torch.Tensor
    #: [T*topk] int64 each row's index into ids.flatten() (token = order // topk)
    order: torch.Tensor
    #: [calls, 3] int64 (first row, rows, expert) of each GEMM call
    pieces: torch.Tensor
    #: the most rows in one call
    most: int


@dataclass(frozen=True)
class Kernel:
    """The loaded library and where it came from."""

    lib: ctypes.CDLL
    path: Path
    #: the bfloat16 form (MKL's bfloat16 GEMMs on the weights as they are) gave the
    #: right answer here too
    bf16: bool = False
    #: the form on the kernel's own AVX512_BF16 GEMMs was built (the CPU has the
    #: instructions) and gave the right answer here
    vnni: bool = False
    #: the form on the kernel's own float32 FMA GEMMs gave the right answer here
    fma: bool = False
    #: and the same GEMMs on bfloat16 weights (`F32_FMA_BF16`)
    fma_bf16: bool = False

    def threads(self) -> int:
        return int(self.lib.conclave_threads())

    def pack(self, w: torch.Tensor, rows: int) -> torch.Tensor:
        """w [n,k] (a linear layer's weight, float32) packed for [rows,k] x w^T products."""
        w = w.to(torch.float32).contiguous()
        n, k = w.shape
        size = int(self.lib.conclave_pack_size(rows, n, k))
        out = torch.empty(-(-size // 4), dtype=torch.float32)
        self.lib.conclave_pack(rows, n, k, w.data_ptr(), out.data_ptr())
        return out

    @staticmethod
    def _packed(w: torch.Tensor, dtype: torch.dtype, size: Any, fill: Any) -> torch.Tensor:
        """w [n,k] in `dtype`, packed by the library's `fill(n, k, w, dest)` into
        `size(n, k)` elements."""
        w = w.to(dtype).contiguous()
        n, k = w.shape
        out = torch.empty(int(size(n, k)), dtype=dtype)
        fill(n, k, w.data_ptr(), out.data_ptr())
        return out

    def pack_vnni(self, w: torch.Tensor) -> torch.Tensor:
        """w [n,k] (a linear layer's weight, bfloat16) packed for the `BF16_VNNI` form:
        [ceil(n/16)][ceil(k/2)][16][2], zero-padded (a copy the weight's size)."""
        return self._packed(
            w, torch.bfloat16, self.lib.conclave_vnni_size, self.lib.conclave_pack_vnni
        )

    def pack_f32(self, w: torch.Tensor) -> torch.Tensor:
        """w [n,k] (a linear layer's weight) packed in float32 for the `F32_FMA` form:
        [ceil(n/lanes)][k][lanes], zero-padded (lanes: the CPU's float32 vector width)."""
        return self._packed(
            w, torch.float32, self.lib.conclave_f32_size, self.lib.conclave_pack_f32
        )

    def pack_f32_bf16(self, w: torch.Tensor) -> torch.Tensor:
        """w [n,k] (a linear layer's weight) packed in bfloat16 for the `F32_FMA_BF16` form:
        [ceil(n/(2 lanes))][k][lanes][2], column j's value and column lanes + j's side by
        side (one 32-bit load, two float32 vectors), zero-padded: a copy the size of the
        weight in bfloat16."""
        return self._packed(
            w, torch.bfloat16, self.lib.conclave_f32_bf16_size, self.lib.conclave_pack_f32_bf16
        )

    def pack_expert(
        self, w13: torch.Tensor, w2: torch.Tensor, form: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One expert's (gate and up, down) weights packed for one of the kernel's own GEMM
        forms (`BF16_VNNI`: `pack_vnni`; `F32_FMA`: `pack_f32`; `F32_FMA_BF16`:
        `pack_f32_bf16`). w13 [2n,k] (gate rows,
        then up rows): n padded with zero rows to `vnni_width(n)`, gate and up interleaved
        by half the kernel's tile (32 rows for VNNI's and for AVX-512's 64-column tiles, 8
        for AVX2's 16), so each tile holds gate columns and the same up columns (SiLU(gate)
        * up is computed from its registers). w2 [k,n]: columns zero-padded to
        `vnni_width(n)` (a padded gate row gives SiLU(0) * 0 = 0: exact)."""
        if form == BF16_VNNI:
            pack, half = self.pack_vnni, 32
        else:
            assert form in (F32_FMA, F32_FMA_BF16), form
            pack = self.pack_f32 if form == F32_FMA else self.pack_f32_bf16
            half = int(self.lib.conclave_f32_panel()) // 2
        assert 32 % half == 0, half  # the padded width is a multiple of 32
        pad = vnni_width(w2.shape[1]) - w2.shape[1]
        return pack(_interleave(w13, half)), pack(torch.nn.functional.pad(w2, (0, pad)))

    def moe(
        self,
        x: torch.Tensor,
        ids: torch.Tensor,
        weights: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        intermediate: int,
        form: int,
        block: int,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """out [T,k] = sum_j weights[t,j] * FFN_ids[t,j](x[t]): routing's bookkeeping
        (what `route` does) and `ffn`'s, in two C calls. x [T,k] float32 (FLOAT32, F32_FMA,
        F32_FMA_BF16) or bfloat16; ids [T,topk] in 0..E-1 for the E experts whose addresses
        w13 and w2 hold; out float32 or bfloat16.

        Between the calls only addresses pass, no tensor views: at 1 token the kernel's
        work is about 0.1 ms, and `route` and `ffn` around it made 8 scratch views and
        their checks, 0.05 ms more (AMD EPYC, Zen 4, 2026-12-03)."""
        self._check_form(form, x.dtype)
        assert out.dtype in (torch.float32, torch.bfloat16) and out.is_contiguous()
        tokens, topk = ids.shape
        rows, k = tokens * topk, x.shape[1]
        assert out.shape == (tokens, k)
        if not rows:
            return out.zero_()
        count, max_rows, at = self._route(x, ids, weights, len(w13), block)
        y, _y = _address("y", rows * k, torch.float32)
        self._call_ffn(
            count,
            at["pieces"][0],
            at["xs"][0],
            at["w"][0],
            rows,
            k,
            intermediate,
            w13,
            w2,
            y,
            max_rows,
            form,
            at["order"][0],
            out,
        )
        return out

    def _check_form(self, form: int, dtype: torch.dtype) -> None:
        """`form` takes x in `dtype`, and is built here."""
        assert dtype in (torch.float32, torch.bfloat16)
        assert (form in (FLOAT32, F32_FMA, F32_FMA_BF16)) == (dtype == torch.float32)
        assert form != BF16_VNNI or self.lib.conclave_vnni()

    def _call_ffn(
        self,
        count: int,
        pieces: int,
        x: int,
        weight: int,
        rows: int,
        k: int,
        intermediate: int,
        w13: torch.Tensor,
        w2: torch.Tensor,
        y: int,
        max_rows: int,
        form: int,
        order: int | None,
        out: torch.Tensor | None,
    ) -> None:
        """`conclave_ffn` on `count` pieces of `rows` rows (their table, inputs and weights
        at these addresses) into y, and with `out` (and `order`) each token's rows summed
        into it: the one place its arguments are laid out (`ffn`, `moe`), with the scratch
        it needs."""
        scratch, _s = _address(
            "scratch", self.threads() * 3 * max_rows * intermediate, torch.float32
        )
        inverse, _i = _address("inverse", rows, torch.int64) if out is not None else (None, None)
        self.lib.conclave_ffn(
            count,
            pieces,
            x,
            weight,
            k,
            intermediate,
            w13.data_ptr(),
            w2.data_ptr(),
            y,
            scratch,
            max_rows,
            form,
            order,
            inverse,
            rows // out.shape[0] if out is not None else 1,
            None if out is None else out.data_ptr(),
            int(out is not None and out.dtype == torch.bfloat16),
        )

    def route(
        self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, experts: int, block: int
    ) -> Routed:
        """Routing's bookkeeping in one C call: the T*topk (token, expert) rows sorted by
        expert (stable), their inputs and weights gathered in that order, and each
        expert's block cut into GEMM calls as `pieces` cuts it. The tensors are views of
        this thread's scratch buffers: used up by the next call."""
        tokens, topk = ids.shape
        rows, k = tokens * topk, x.shape[1]
        count, most, at = self._route(x, ids, weights, experts, block)
        xs = at["xs"][1][: rows * k].view(rows, k)
        w, order = at["w"][1][:rows], at["order"][1][:rows]
        pieces = at["pieces"][1][: 3 * count].view(count, 3)
        return Routed(xs, w, order, pieces, most)

    def _route(
        self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, experts: int, block: int
    ) -> tuple[int, int, dict[str, tuple[int, torch.Tensor]]]:
        """`route`'s C call: (pieces, the most rows in one, {"xs", "w", "order", "pieces":
        the address of each result, and the scratch tensor holding it})."""
        tokens, topk = ids.shape
        rows, k = tokens * topk, x.shape[1]
        x = x.contiguous()
        ids = ids.to(torch.int32).contiguous()
        weights = weights.to(torch.float32).contiguous()
        at = {
            "xs": _address(f"xs-{x.dtype}", rows * k, x.dtype),
            "w": _address("w", rows, torch.float32),
            "order": _address("order", rows, torch.int64),
            "pieces": _address("pieces", 3 * rows, torch.int64),
        }
        counts, _counts = _address("counts", 2 * experts + 1, torch.int64)
        most = counts + 8 * 2 * experts  # where the call writes the most rows of a piece
        count = self.lib.conclave_route(
            tokens,
            topk,
            experts,
            ids.data_ptr(),
            weights.data_ptr(),
            block,
            x.data_ptr(),
            k,
            int(x.dtype == torch.bfloat16),
            *(at[name][0] for name in ("xs", "w", "order", "pieces")),
            counts,
            most,
        )
        if count < 0:
            raise ValueError(f"expert ids must be in 0..{experts - 1}")
        return count, ctypes.c_int64.from_address(most).value, at

    def ffn(
        self,
        pieces: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        intermediate: int,
        form: int | None = None,
        order: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
        max_rows: int | None = None,
    ) -> torch.Tensor:
        """y [R,k] float32: row r is weight[r] * FFN(x[r]) of its piece's expert. pieces
        [P,3] int64 (first row, rows, expert), each expert's rows contiguous; weight [R]
        float32; w13 and w2: int64 addresses of each expert's weights, packed by `pack`
        for float32 x, bfloat16 [2N,K] and [K,N] as they are for bfloat16 x, or packed
        by `pack_expert` for the `BF16_VNNI`, `F32_FMA` and `F32_FMA_BF16` forms (there
        `intermediate` is their `vnni_width`). By default FLOAT32 or BF16_MKL, by x.

        With `out` [T,k] (float32 or bfloat16, T = R / topk) and `order` [R] int64 (row
        r's flat token * topk + slot): out[t] is the sum of token t's rows instead, summed
        in float32 and rounded once; out is returned. `max_rows`: the most rows a piece
        has, where the caller knows it."""
        assert x.is_contiguous()
        if form is None:
            form = BF16_MKL if x.dtype == torch.bfloat16 else FLOAT32
        self._check_form(form, x.dtype)
        rows, k = x.shape
        if out is None:
            y = torch.empty(rows, k, dtype=torch.float32)
        else:  # y stays inside: a buffer kept for the next call (no fresh pages each call)
            assert order is not None and len(order) == rows and out.is_contiguous()
            assert out.dtype in (torch.float32, torch.bfloat16) and out.shape[1] == k
            assert out.shape[0] and rows % out.shape[0] == 0
            y = _buffer("y", rows * k, torch.float32)
        if not len(pieces):
            return y if out is None else out.zero_()
        if max_rows is None:
            max_rows = int(pieces[:, 1].max())
        self._call_ffn(
            len(pieces),
            pieces.data_ptr(),
            x.data_ptr(),
            weight.data_ptr(),
            rows,
            k,
            intermediate,
            w13,
            w2,
            y.data_ptr(),
            max_rows,
            form,
            None if order is None else order.data_ptr(),
            out,
        )
        return y if out is None else out


_buffers = threading.local()

#: The largest scratch tensor `_buffer` keeps between calls. A bigger one is made fresh
#: each call: its pages' first touch (about 0.2 us a 4 KB page) is then well under 1% of
#: a call that needs it, and a thread holds at most this much per buffer.
KEEP_BYTES = 16 << 20


def _buffer(name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A scratch tensor of `numel` elements, kept per thread and name between calls up to
    `KEEP_BYTES`: a fresh one each call cost its pages' first touch (0.3-0.5 ms of a 5 ms
    layer at 512 tokens on an AMD EPYC, 2026-12-02)."""
    return _address(name, numel, dtype)[1][:numel]


def _address(name: str, numel: int, dtype: torch.dtype) -> tuple[int, torch.Tensor]:
    """`_buffer`'s scratch as an address, and the tensor that owns it (keep it alive for
    the call): no view made."""
    if numel * dtype.itemsize > KEEP_BYTES:
        fresh = torch.empty(numel, dtype=dtype)
        return fresh.data_ptr(), fresh
    have = getattr(_buffers, name, None)
    if have is None or have.numel() < numel or have.dtype != dtype:
        have = torch.empty(numel, dtype=dtype)
        setattr(_buffers, name, have)
    return have.data_ptr(), have


def _interleave(w13: torch.Tensor, by: int) -> torch.Tensor:
    """w13 [2n,k] (gate rows, then up rows) as [2 * vnni_width(n), k]: each half padded
    with zero rows, then `by` gate rows, the same `by` up rows, and so on (`by` divides
    32)."""
    n, k = w13.shape[0] // 2, w13.shape[1]
    wide = vnni_width(n)

    def blocks(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(w, (0, 0, 0, wide - n)).view(wide // by, by, k)

    return torch.cat([blocks(w13[:n]), blocks(w13[n:])], 1).view(-1, k)


def vnni_width(n: int) -> int:
    """The intermediate width the `BF16_VNNI` form computes on: n up to a multiple of 32."""
    return -(-n // 32) * 32


def unavailable() -> str | None:
    """Why the kernel cannot be used here; None when it can (builds it if need be)."""
    got = _kernel()
    return got if isinstance(got, str) else None


def kernel() -> Kernel | None:
    """The compiled kernel, built (or found in the cache) and checked, once per process;
    None where it cannot be (`unavailable()` says why, and the log)."""
    got = _kernel()
    return got if isinstance(got, Kernel) else None


@functools.cache
def _kernel() -> Kernel | str:
    got = attempt()
    if isinstance(got, str):
        log.info("the grouped MoE kernel is not used here: %s", got)
    return got


def attempt() -> Kernel | str:
    """Build (or find in the cache), load and check the kernel: it, or why not."""
    try:
        built = build()
        try:
            return _check(_load(built))
        except Unavailable as exc:
            if not built.cached:
                raise
            # a library from the cache that does not load or gives wrong answers (a disk
            # fault, a file copied in from elsewhere): built again once, not trusted
            log.info("the cached grouped MoE kernel %s: %s; building it again", built.path, exc)
        return _check(_load(build(again=True)))
    except Unavailable as exc:
        return str(exc)
    except (OSError, subprocess.SubprocessError) as exc:  # a compiler that cannot run
        return f"could not build {SOURCE.name}: {exc}"


def _load(built: Built) -> Kernel:
    path, own = built.path, built.own
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise Unavailable(f"could not load {path}: {exc}") from None
    finally:
        if own:  # loaded (or not): the file is no longer needed
            shutil.rmtree(path.parent, ignore_errors=True)
    lib.conclave_threads.argtypes, lib.conclave_threads.restype = [], _I64
    lib.conclave_pack_size.argtypes, lib.conclave_pack_size.restype = [_I64] * 3, _I64
    lib.conclave_pack.argtypes, lib.conclave_pack.restype = [_I64] * 3 + [_PTR] * 2, None
    ffn_args: list[type] = [_I64, *[_PTR] * 3, *[_I64] * 2, *[_PTR] * 4, _I64, _I64]
    ffn_args += [_PTR, _PTR, _I64, _PTR, _I64]  # order, inverse, topk, out, out in bfloat16
    lib.conclave_ffn.argtypes = ffn_args
    lib.conclave_ffn.restype = None
    lib.conclave_route.argtypes = [*[_I64] * 3, _PTR, _PTR, _I64, _PTR, _I64, _I64, *[_PTR] * 6]
    lib.conclave_route.restype = _I64
    lib.conclave_vnni.argtypes, lib.conclave_vnni.restype = [], _I64
    lib.conclave_vnni_size.argtypes, lib.conclave_vnni_size.restype = [_I64] * 2, _I64
    lib.conclave_pack_vnni.argtypes = [_I64] * 2 + [_PTR] * 2
    lib.conclave_pack_vnni.restype = None
    lib.conclave_f32_panel.argtypes, lib.conclave_f32_panel.restype = [], _I64
    lib.conclave_f32_size.argtypes, lib.conclave_f32_size.restype = [_I64] * 2, _I64
    lib.conclave_pack_f32.argtypes = [_I64] * 2 + [_PTR] * 2
    lib.conclave_pack_f32.restype = None
    lib.conclave_f32_bf16_size.argtypes = [_I64] * 2
    lib.conclave_f32_bf16_size.restype = _I64
    lib.conclave_pack_f32_bf16.argtypes = [_I64] * 2 + [_PTR] * 2
    lib.conclave_pack_f32_bf16.restype = None
    return Kernel(lib, path)


def _check(k: Kernel) -> Kernel:
    """A small FFN through the kernel against PyTorch's, in float32 (it must pass), in
    bfloat16 on MKL (`Kernel.bf16`), and on the kernel's own GEMMs in bfloat16
    (`Kernel.vnni`, where built) and float32 (`Kernel.fma`, and on bfloat16 weights
    `Kernel.fma_bf16`; for these an odd hidden size:
    a k with no pair partner, columns off a whole vector): experts with no rows, one
    row, rows over the packing hint, enough pieces for the threaded split and too few;
    each row alone, each token's rows summed, and routing's bookkeeping done in the
    kernel (`Kernel.moe`)."""
    g = torch.Generator().manual_seed(0)
    experts, inter, rows_hint = 5, 40, 8
    forms = [FLOAT32, BF16_MKL, F32_FMA, F32_FMA_BF16]
    forms += [BF16_VNNI] if k.lib.conclave_vnni() else []
    ok = {}
    for form in forms:
        own = form in (BF16_VNNI, F32_FMA, F32_FMA_BF16)  # own GEMMs: tiles cut mid-vector
        hidden = 47 if own else 48
        w13 = torch.randn(experts, 2 * inter, hidden, generator=g) * 0.2
        w2 = torch.randn(experts, hidden, inter, generator=g) * 0.2
        if form == FLOAT32:
            packed = [(k.pack(w13[e], rows_hint), k.pack(w2[e], rows_hint)) for e in range(experts)]
            dtype, tol = torch.float32, (1e-4, 1e-5)
        elif form in (F32_FMA, F32_FMA_BF16):
            if form == F32_FMA_BF16:  # float32 arithmetic on exactly the bfloat16 weights
                w13, w2 = w13.bfloat16().float(), w2.bfloat16().float()
            packed = [k.pack_expert(w13[e], w2[e], form) for e in range(experts)]
            dtype, tol = torch.float32, (1e-4, 1e-5)
        else:
            w13, w2 = w13.bfloat16().float(), w2.bfloat16().float()  # what they compute on
            packed = [(w13[e].bfloat16(), w2[e].bfloat16()) for e in range(experts)]
            if form == BF16_VNNI:
                packed = [k.pack_expert(a, b, form) for a, b in packed]
            dtype, tol = torch.bfloat16, (2e-2, 2e-2)  # its activations are rounded
        a13, a2 = (torch.tensor([p[i].data_ptr() for p in packed]) for i in (0, 1))
        width = vnni_width(inter) if own else inter

        def ffn(
            x: torch.Tensor, e: int, w13: torch.Tensor = w13, w2: torch.Tensor = w2
        ) -> torch.Tensor:
            return _swiglu(x.float(), w13[e], w2[e], inter)  # this form's weights

        pairs = []  # (the kernel's answer, PyTorch's, absolute tolerance)
        for counts in ([3, 0, 1, 19, 9], [2, 0, 0, 0, 0]):  # 7 pieces, then 1
            table = pieces(counts, rows_hint)
            x = torch.randn(sum(counts), hidden, generator=g).to(dtype)
            weight = torch.rand(sum(counts), generator=g)
            args = (torch.tensor(table, dtype=torch.int64), x, weight, a13, a2, width, form)
            want = torch.cat([weight[a : a + r, None] * ffn(x[a : a + r], e) for a, r, e in table])
            pairs.append((k.ffn(*args), want, tol[1]))
            # and each token's two rows summed inside: row r is token order[r] // 2's
            order = torch.randperm(len(x), generator=g)
            summed = k.ffn(*args, order, torch.empty(len(x) // 2, hidden))
            pairs.append(
                (summed, torch.zeros_like(summed).index_add_(0, order // 2, want), 2 * tol[1])
            )
        # and routing's bookkeeping in the kernel (`moe`): 9 tokens, top-2 of the 5 experts
        ids = torch.stack([torch.randperm(experts, generator=g)[:2] for _ in range(9)])
        x, weights = torch.randn(9, hidden, generator=g).to(dtype), torch.rand(9, 2, generator=g)
        got = k.moe(x, ids, weights, a13, a2, width, form, 3, torch.empty(9, hidden))
        rows = [[ffn(x[t, None], int(e))[0] for e in ids[t]] for t in range(9)]
        want = torch.stack(
            [weights[t, 0] * r[0] + weights[t, 1] * r[1] for t, r in enumerate(rows)]
        )
        pairs.append((got, want, 2 * tol[1]))
        ok[form] = all(torch.allclose(a, b, rtol=tol[0], atol=atol) for a, b, atol in pairs)
        if not ok[form]:
            err = max(float((a - b).abs().max()) for a, b, _ in pairs)
            if form == FLOAT32:
                raise Unavailable(f"{k.path.name} gave a wrong answer (max error {err:.2g})")
            name = {
                BF16_MKL: "MKL bfloat16",
                BF16_VNNI: "AVX512_BF16",
                F32_FMA: "float32 FMA",
                F32_FMA_BF16: "float32 FMA on bfloat16 weights",
            }
            log.info("the grouped MoE kernel's %s form is left out: error %.2g", name[form], err)
    return replace(
        k,
        bf16=ok[BF16_MKL],
        vnni=ok.get(BF16_VNNI, False),
        fma=ok[F32_FMA],
        fma_bf16=ok[F32_FMA_BF16],
    )


def pieces(counts: list[int], block: int) -> list[tuple[int, int, int]]:
    """(first row, rows, expert) of each GEMM call: each expert's block of rows (in
    expert order) cut into equal pieces of at most `block` rows, the last maybe smaller."""
    out, start = [], 0
    for e, count in enumerate(counts):
        if count:
            size = -(-count // -(-count // block))
            out += [(a, min(size, start + count - a), e) for a in range(start, start + count, size)]
        start += count
    return out


def _swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, n: int) -> torch.Tensor:
    h = x @ w13.t()
    return (torch.nn.functional.silu(h[:, :n]) * h[:, n:]) @ w2.t()
