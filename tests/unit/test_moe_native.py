"""The grouped path's compiled kernel (`kernels.native`): built on first use with the
machine's C compiler, checked before use, cached, and left out (saying why) where it
cannot be built or gives a wrong answer. Real builds: `cc` runs in these tests."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

import kernels.autotune
import kernels.build
import kernels.grouped
import kernels.native as native
from kernels.autotune import ChoiceCache
from kernels.moe import MoEConfig, MoELayer

HERE = kernels.build.compiler() is not None and torch.backends.mkl.is_available()
needs_cc = pytest.mark.skipif(not HERE, reason="no C compiler or no MKL in this PyTorch")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of the test's own: each build here is a fresh one."""
    monkeypatch.setenv("CONCLAVE_CACHE", str(tmp_path))
    return tmp_path / "kernels"


@needs_cc
def test_it_builds_once_per_machine_and_leaves_no_half_written_file(cache):
    first = native.attempt()
    assert isinstance(first, native.Kernel), first
    assert [p.name for p in cache.iterdir()] == [first.path.name]  # no .tmp left
    stamp = first.path.stat().st_mtime_ns
    again = native.attempt()
    assert isinstance(again, native.Kernel) and again.path == first.path
    assert first.path.stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt


@needs_cc
def test_a_broken_library_in_the_cache_is_built_again(cache):
    """In a fresh process (this one already has the library loaded under that name)."""
    first = native.attempt()
    assert isinstance(first, native.Kernel), first
    junk = first.path.with_suffix(".junk")  # a disk fault, say; a new file, so the
    junk.write_bytes(b"not a shared library")  # library this process mapped is untouched
    os.replace(junk, first.path)
    probe = "import kernels.native as n; k = n.attempt(); print(type(k).__name__, k)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("Kernel"), done.stdout + done.stderr
    assert first.path.read_bytes()[:4] == b"\x7fELF"  # built again in its place


@needs_cc
def test_a_cache_it_cannot_write_builds_for_the_process_and_leaves_nothing(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # $CONCLAVE_CACHE/kernels cannot be made
    monkeypatch.setenv("CONCLAVE_CACHE", str(blocked))
    got = native.attempt()
    assert isinstance(got, native.Kernel), got
    assert not got.path.parent.exists()  # its own build, removed once loaded
    assert got.threads() >= 1


def test_without_a_compiler_it_is_left_out_and_says_what_to_do(cache, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    why = native.attempt()
    assert isinstance(why, str)
    if torch.backends.mkl.is_available():  # else it stops earlier, at MKL
        assert "no C compiler" in why and "gcc" in why
        assert "CC='no-such-compiler-here' is not a program on the PATH" in why


@needs_cc
def test_a_failed_build_names_the_compiler_and_writes_nothing(cache, monkeypatch, tmp_path):
    fake = tmp_path / "bad-cc"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo bad 1.0 && exit 0\n'
        "echo 'error: this compiler refuses' >&2; exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    why = native.attempt()
    assert isinstance(why, str) and "bad-cc" in why and "refuses" in why
    assert not cache.exists() or not any(cache.iterdir())


@needs_cc
def test_a_wrong_bfloat16_form_leaves_only_the_float32_one(cache, monkeypatch):
    real = native.Kernel.ffn

    def off_in_bf16(self, pieces, x, *args):
        y = real(self, pieces, x, *args)
        return y + 0.5 if x.dtype == torch.bfloat16 else y

    monkeypatch.setattr(native.Kernel, "ffn", off_in_bf16)
    got = native.attempt()
    assert isinstance(got, native.Kernel) and not got.bf16
    monkeypatch.setattr(kernels.grouped, "mkl_sgemm", lambda: True)
    monkeypatch.setattr(native, "kernel", lambda: got)
    assert "grouped:native-bf16" not in kernels.grouped.variants(torch.bfloat16)
    assert "grouped:native" in kernels.grouped.variants(torch.bfloat16)


@needs_cc
def test_where_memory_is_short_the_bfloat16_forms_run_without_a_float32_copy(monkeypatch):
    """A bfloat16 layer whose float32 copy would not fit keeps the kernel: its bfloat16
    forms compute on the weights as they are (MKL's bfloat16 GEMMs) or on a packed copy
    in bfloat16 (the own FMA GEMMs, widening each weight in registers)."""
    k = native.kernel()
    assert k is not None and k.bf16 and k.fma_bf16, native.unavailable()
    monkeypatch.setattr("kernels.moe.available_bytes", lambda: 1)
    layer = MoELayer(MoEConfig(hidden=64, intermediate=72, experts=5, top_k=2))
    x = torch.randn(40, 64).bfloat16()
    paths = layer.paths(x)
    assert "grouped:native-bf16" in paths and "grouped:native-fma-bf16" in paths
    assert "grouped:native" not in paths and "grouped:float32" not in paths
    assert "grouped:native-fma" not in paths
    packed = layer._grouped_weights("grouped:native-bf16")
    assert packed.experts[0][0].data_ptr() == layer.w13.data_ptr()  # no copy
    fma = layer._grouped_weights("grouped:native-fma-bf16")
    assert all(t.dtype == torch.bfloat16 for pair in fma.experts for t in pair)
    for path in ("grouped:native-bf16", "grouped:native-fma-bf16"):
        y, ref = layer._forward(x, path), layer.reference(x)
        err = float((y.float() - ref.float()).abs().max())
        assert err <= 0.03 * float(ref.abs().max()) + 0.02, (path, err)


@needs_cc
def test_a_bfloat16_layer_times_the_fma_gemms_on_its_bfloat16_weights(monkeypatch):
    """For a bfloat16 layer `auto` weighs the own FMA GEMMs on bfloat16 weights in place of
    a float32 copy (the same answers, half the traffic); the float32 copy only where that
    form failed its check; a float32 layer, the float32 form."""
    k = native.kernel()
    assert k is not None and k.fma and k.fma_bf16, native.unavailable()
    monkeypatch.setattr(kernels.grouped, "mkl_sgemm", lambda: True)
    monkeypatch.setattr(native, "kernel", lambda: k)
    bf16 = kernels.grouped.variants(torch.bfloat16)
    assert "grouped:native-fma-bf16" in bf16 and "grouped:native-fma" not in bf16
    assert "grouped:native-fma" in kernels.grouped.variants(torch.float32)
    assert "grouped:native-fma-bf16" not in kernels.grouped.variants(torch.float32)
    monkeypatch.setattr(native, "kernel", lambda: dataclasses.replace(k, fma_bf16=False))
    bf16 = kernels.grouped.variants(torch.bfloat16)
    assert "grouped:native-fma" in bf16 and "grouped:native-fma-bf16" not in bf16


@needs_cc
def test_a_compiler_without_openmp_builds_it_on_one_thread(cache, monkeypatch, tmp_path):
    """clang without LLVM's libomp, say: the kernel is built again without OpenMP."""
    fake = tmp_path / "no-openmp-cc"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = -fopenmp ] && echo "omp.h: not found" >&2 && exit 1; done\n'
        f'exec {kernels.build.compiler()} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    got = native.attempt()
    assert isinstance(got, native.Kernel), got
    assert got.threads() == 1 and [p.name for p in cache.iterdir()] == [got.path.name]


@needs_cc
def test_a_kernel_that_gives_a_wrong_answer_is_left_out(cache, monkeypatch):
    real = native.Kernel.ffn

    def off_by_a_bit(self, *args, **kwargs):
        return real(self, *args, **kwargs) + 1e-3

    monkeypatch.setattr(native.Kernel, "ffn", off_by_a_bit)
    why = native.attempt()
    assert isinstance(why, str) and "wrong answer" in why


def test_where_it_is_left_out_the_mkl_path_is_weighed_in_its_place(monkeypatch):
    monkeypatch.setattr(kernels.grouped, "mkl_sgemm", lambda: True)
    monkeypatch.setattr(native, "kernel", lambda: None)
    assert kernels.grouped.variants(torch.float32)[-1] == "grouped:mkl"


def test_pieces_cut_each_experts_rows_into_equal_calls():
    assert kernels.grouped.pieces([5, 0, 1, 9], 4) == [
        (0, 3, 0),
        (3, 2, 0),
        (5, 1, 2),
        (6, 3, 3),
        (9, 3, 3),
        (12, 3, 3),
    ]
    assert kernels.grouped.pieces([0, 0], 4) == []


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_routing_in_c_sorts_gathers_and_cuts_as_the_python_reference_does(dtype):
    """`Kernel.route` (C) against the reference: a stable sort by expert, each row's input
    and weight gathered, and the pieces `pieces` (Python, the MKL path's) cuts, for
    experts with none, one, and more rows than a block."""
    k = native.kernel()
    assert k is not None, native.unavailable()
    gen = torch.Generator().manual_seed(7)
    for tokens, topk, experts, block in ((1, 1, 3, 4), (37, 2, 6, 5), (200, 3, 8, 16)):
        x = torch.randn(tokens, 24, generator=gen).to(dtype)
        ids = torch.randint(0, experts - 1, (tokens, topk), generator=gen)  # the last: none
        ids[0, 0] = 0
        weights = torch.rand(tokens, topk, generator=gen)
        r = k.route(x, ids, weights, experts, block)
        order = torch.sort(ids.flatten(), stable=True).indices
        assert torch.equal(r.order, order)
        assert torch.equal(r.xs, x[order // topk])
        assert torch.equal(r.w, weights.flatten()[order])
        counts = torch.bincount(ids.flatten(), minlength=experts).tolist()
        assert [tuple(p) for p in r.pieces.tolist()] == native.pieces(counts, block)
        assert r.most == max(n for _, n, _ in native.pieces(counts, block))


FORMS = [
    ("float32", "grouped:native", "grouped compiled kernel on MKL packed sgemm (float32)"),
    ("bfloat16", "grouped:native", "grouped compiled kernel on MKL packed sgemm (float32)"),
    (
        "bfloat16",
        "grouped:native-bf16",
        "grouped compiled kernel on MKL bf16 GEMMs (bfloat16 weights)",
    ),
    (
        "bfloat16",
        "grouped:native-avx512bf16",
        "grouped compiled kernel, own AVX512-BF16 GEMMs (bfloat16)",
    ),
    ("float32", "grouped:native-fma", "grouped compiled kernel, own float32 FMA GEMMs (float32)"),
    (
        "bfloat16",
        "grouped:native-fma-bf16",
        "grouped compiled kernel, own float32 FMA GEMMs (bf16 weights)",
    ),
]


def vnni_here() -> bool:
    k = native.kernel()
    return k is not None and k.vnni


@needs_cc
@pytest.mark.parametrize(("dtype", "path", "kernel"), FORMS)
@pytest.mark.parametrize("top_k", [2, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_auto_runs_the_kernel_where_it_is_fastest_and_it_matches_the_reference(
    dtype, path, kernel, top_k, threads, tmp_path, monkeypatch
):
    """Every expert's FFN in one call: pieces spread over the threads (many pieces) or one
    after another (few), zero-computation experts, top-3 summed in float32."""
    assert native.kernel() is not None, native.unavailable()
    if path == "grouped:native-avx512bf16" and not vnni_here():
        pytest.skip("this CPU has no AVX512_BF16 (or the compiler does not target it)")
    monkeypatch.setattr(kernels.grouped, "MKL_ROWS", 16)  # blocks cut into pieces, unequal
    monkeypatch.setattr("kernels.moe.time_paths", lambda fns, **_: _scripted(fns, path))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = MoEConfig(
            hidden=64, intermediate=72, experts=5, top_k=top_k, zero_experts=1, dtype=dtype
        )
        layer = MoELayer(cfg, seed=top_k)
        layer.cache = ChoiceCache(tmp_path / "auto.json")
        tol = 1e-4
        for tokens in (1, 7, 64, 300):
            x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(tokens))
            x = x.to(layer.w13.dtype)
            assert layer.path_for(x) == path and layer.kernel_for(x) == kernel
            y, ref = layer(x), layer.reference(x)
            assert y.dtype == x.dtype
            tol = 0.03 * float(ref.abs().max()) + 0.02 if dtype == "bfloat16" else 1e-4
            assert float((y.float() - ref.float()).abs().max()) <= tol
        packs = layer.packs
        with torch.no_grad():
            layer.w13.mul_(0.5)
        y = layer(x).float()  # the kernel's packed weights follow a change
        assert layer.packs == packs + 1
        assert float((y - layer.reference(x).float()).abs().max()) <= tol
    finally:
        torch.set_num_threads(before)


def _scripted(fns, fastest):
    """auto's timings: `fastest` fastest (each candidate still runs)."""
    for fn in fns.values():
        fn()
    return {p: [(1.0 if p == fastest else 5.0) / 1000] * 3 for p in fns}


@needs_cc
@pytest.mark.parametrize(("hidden", "inter"), [(64, 64), (47, 40), (1100, 600)])
@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_the_avx512_bf16_form_matches_pytorch_on_awkward_shapes(hidden, inter, top_k, out_dtype):
    """The kernel's own GEMMs: an odd hidden size (a k with no pair partner), columns off a
    multiple of 16 and 64, an intermediate width padded to 32, k over one 512-block in
    both GEMMs (partial sums kept between blocks), row counts off the 6-row tile; each
    token's rows summed inside (`out`), in float32 or rounded once to bfloat16."""
    if not vnni_here():
        pytest.skip("this CPU has no AVX512_BF16 (or the compiler does not target it)")
    k = native.kernel()
    assert k is not None
    g = torch.Generator().manual_seed(hidden + top_k)
    experts, tokens = 4, 29
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5).bfloat16()
    w2 = (torch.randn(experts, hidden, inter, generator=g) / inter**0.5).bfloat16()
    x = torch.randn(tokens, hidden, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=g)
    order = ids.reshape(-1).argsort(stable=True)
    counts = torch.bincount(ids.reshape(-1), minlength=experts).tolist()
    table = torch.tensor(native.pieces(counts, 7), dtype=torch.int64)
    xs = x.index_select(0, order // top_k).contiguous()
    w = weights.reshape(-1).index_select(0, order).contiguous()
    a13, a2 = zip(
        *(k.pack_expert(w13[e], w2[e], native.BF16_VNNI) for e in range(experts)), strict=True
    )
    addresses = [torch.tensor([t.data_ptr() for t in a], dtype=torch.int64) for a in (a13, a2)]
    width = native.vnni_width(inter)
    out = torch.full((tokens, hidden), float("nan"), dtype=out_dtype)  # every row written
    got = k.ffn(table, xs, w, *addresses, width, native.BF16_VNNI, order, out)
    assert got is out
    want = torch.zeros(tokens, hidden)
    for t in range(tokens):
        for j in range(top_k):
            e = int(ids[t, j])
            h = x[t].float() @ w13[e].float().t()
            act = (torch.nn.functional.silu(h[:inter]) * h[inter:] * weights[t, j]).bfloat16()
            want[t] += act.float() @ w2[e].float().t()
    tol = 0.02 * float(want.abs().max()) + 1e-2
    assert float((got.float() - want).abs().max()) <= tol


@pytest.fixture(scope="module")
def avx2_kernel(tmp_path_factory):
    """The kernel as a CPU with AVX2 but no AVX-512 gets it (8-lane vectors, 16-column
    tiles): built with `-mno-avx512f` into a cache of its own, and checked."""
    if not HERE or "avx2" not in kernels.autotune.cpuinfo().flags:
        pytest.skip("no C compiler, no MKL, or a CPU without AVX2")
    tmp = tmp_path_factory.mktemp("avx2")
    fake = tmp / "avx2-cc"
    fake.write_text(f'#!/bin/sh\nexec {kernels.build.compiler()} "$@" -mno-avx512f\n')
    fake.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CC", str(fake))
        mp.setenv("CONCLAVE_CACHE", str(tmp / "cache"))
        got = native.attempt()
    assert isinstance(got, native.Kernel), got
    return got


def _fma_moe(k, form, w13, w2, x, ids, weights, inter):
    """The kernel's `moe` on weights packed for own-FMA `form`, into a NaN-filled out."""
    packed = [k.pack_expert(w13[e], w2[e], form) for e in range(len(w13))]
    addresses = [torch.tensor([p[i].data_ptr() for p in packed]) for i in (0, 1)]
    out = torch.full(x.shape, float("nan"))  # every row written
    got = k.moe(x, ids, weights, *addresses, native.vnni_width(inter), form, 7, out)
    assert got is out
    return got


@needs_cc
@pytest.mark.parametrize(("hidden", "inter"), [(64, 64), (47, 40), (1100, 600)])
@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("isa", ["this CPU", "AVX2"])
def test_the_fma_forms_match_pytorch_on_awkward_shapes(hidden, inter, top_k, isa, request):
    """The kernel's own float32 GEMMs, in this CPU's vectors and in AVX2's: columns off a
    whole vector and off a tile (the ragged tile computed on a copy), an intermediate
    padded to 32 and interleaved by half a tile, k over one 512-block in both GEMMs,
    row counts off the 6-row tile, each token's rows summed inside. On bfloat16 weights
    (packed in pairs of vectors, a pair cut in half at a ragged edge) the very answers of
    the float32 form on the same values: the widening is exact."""
    k = request.getfixturevalue("avx2_kernel") if isa == "AVX2" else native.kernel()
    assert k is not None and k.fma and k.fma_bf16, native.unavailable()
    if isa == "AVX2":
        assert k.lib.conclave_f32_panel() == 16  # 2 vectors of 8
    g = torch.Generator().manual_seed(hidden + top_k)
    experts, tokens = 4, 29
    w13 = torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, generator=g) / inter**0.5
    x = torch.randn(tokens, hidden, generator=g)
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=g)
    got = _fma_moe(k, native.F32_FMA, w13, w2, x, ids, weights, inter)
    b13, b2 = w13.bfloat16(), w2.bfloat16()
    on_bf16 = _fma_moe(k, native.F32_FMA_BF16, b13, b2, x, ids, weights, inter)
    assert torch.equal(on_bf16, _fma_moe(k, native.F32_FMA, b13, b2, x, ids, weights, inter))
    assert not torch.equal(on_bf16, got)  # and it did compute on the rounded weights
    want = torch.zeros(tokens, hidden)
    for t in range(tokens):
        for j in range(top_k):
            e = int(ids[t, j])
            h = x[t] @ w13[e].t()
            want[t] += (torch.nn.functional.silu(h[:inter]) * h[inter:] * weights[t, j]) @ w2[e].t()
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-5
    # a token alone (decoding: 1-row tiles, k split over sets of accumulators) gets its
    # row of the batch, summed in another order
    for form, a13, a2 in ((native.F32_FMA, w13, w2), (native.F32_FMA_BF16, b13, b2)):
        one = _fma_moe(k, form, a13, a2, x[:1], ids[:1], weights[:1], inter)
        batch = got if form == native.F32_FMA else on_bf16
        assert torch.allclose(one, batch[:1], rtol=1e-4, atol=1e-5)


@needs_cc
def test_a_build_without_avx512_bf16_leaves_that_form_out(cache, monkeypatch, tmp_path):
    """A CPU without the instructions (or a compiler that does not target them): the
    kernel builds without that form and `auto` does not weigh it."""
    fake = tmp_path / "no-bf16-cc"
    fake.write_text(f'#!/bin/sh\nexec {kernels.build.compiler()} "$@" -mno-avx512bf16\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    got = native.attempt()
    assert isinstance(got, native.Kernel), got
    assert not got.vnni and got.lib.conclave_vnni() == 0
    monkeypatch.setattr(kernels.grouped, "mkl_sgemm", lambda: True)
    monkeypatch.setattr(native, "kernel", lambda: got)
    assert "grouped:native-avx512bf16" not in kernels.grouped.variants(torch.bfloat16)
    assert "grouped:native" in kernels.grouped.variants(torch.bfloat16)


@needs_cc
def test_an_expert_id_out_of_range_is_an_error_not_a_write_out_of_bounds():
    k = native.kernel()
    assert k is not None, native.unavailable()
    w13, w2 = torch.randn(3, 32, 16), torch.randn(3, 16, 16)  # hidden 16, intermediate 16
    packed = [(k.pack(w13[e], 8), k.pack(w2[e], 8)) for e in range(3)]
    a13, a2 = (torch.tensor([p[i].data_ptr() for p in packed]) for i in (0, 1))
    x, weights = torch.randn(4, 16), torch.rand(4, 2)
    for bad in (3, -1):
        ids = torch.tensor([[0, 1], [2, bad], [1, 0], [0, 2]])
        with pytest.raises(ValueError, match=r"expert ids must be in 0\.\.2"):
            k.moe(x, ids, weights, a13, a2, 16, native.FLOAT32, 8, torch.empty(4, 16))


def test_scratch_buffers_are_kept_per_thread_and_only_up_to_a_bound(monkeypatch):
    """Kept between calls (no fresh pages each call), one set per thread (two threads
    calling the kernel at once never share one), none over `KEEP_BYTES` held."""
    import threading

    monkeypatch.setattr(native, "_buffers", threading.local())
    a = native._buffer("t", 100, torch.float32)
    assert native._buffer("t", 80, torch.float32).data_ptr() == a.data_ptr()  # reused
    assert native._buffer("t", 200, torch.float32).numel() == 200  # grown
    big = native.KEEP_BYTES // 4 + 1
    one, two = native._buffer("t", big, torch.float32), native._buffer("t", big, torch.float32)
    assert one.data_ptr() != two.data_ptr()  # not kept: made each call
    kept = native._buffer("t", 10, torch.float32).data_ptr()
    other: list[int] = []
    worker = threading.Thread(
        target=lambda: other.append(native._buffer("t", 10, torch.float32).data_ptr())
    )
    worker.start()
    worker.join()
    assert other and other[0] != kept
