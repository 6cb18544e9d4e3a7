"""The MoE layer's `auto`: it runs the path it measured fastest, once per bucket and
machine, and the grouped path matches the reference (no vLLM needed for either)."""

from __future__ import annotations

import json

import pytest
import torch

from kernels import autotune
from kernels import moe as moe_mod
from kernels.autotune import ChoiceCache, bucket
from kernels.moe import MoEBackendError, MoEConfig, MoELayer

CFG = MoEConfig(hidden=64, intermediate=96, experts=4, top_k=2)


@pytest.fixture
def timings(monkeypatch):
    """Scripted timings (ms per path) for auto's measurement, and how often it measured.
    MKL's packed sgemm is left out (present on x86 wheels only); its own test adds it."""
    import kernels.grouped

    monkeypatch.setattr(kernels.grouped, "mkl_sgemm", lambda: False)
    script: dict[str, float] = {}
    calls: list[list[str]] = []

    def fake(fns, **_kw):
        calls.append(sorted(fns))
        for fn in fns.values():
            fn()  # each candidate still runs (and must work)
        return {p: [script[p] / 1000] * 3 for p in fns}

    monkeypatch.setattr(moe_mod, "time_paths", fake)
    monkeypatch.setattr(moe_mod, "cpu_isas", lambda cfg, dtype: ["vec"])
    monkeypatch.setattr(MoELayer, "_cpu_fused", lambda self, x, w, ids, isa: self._naive(x, w, ids))
    return script, calls


def test_buckets_are_nearest_in_log_scale():
    assert [bucket(m) for m in (1, 3, 5, 16, 45, 300, 512, 900, 1100, 9000)] == [
        1,
        1,
        16,
        16,
        16,
        512,
        512,
        512,
        2048,
        2048,
    ]


def test_auto_runs_the_fastest_path_it_measured_and_measures_once_per_machine(timings, tmp_path):
    script, calls = timings
    script.update({"fused:vec": 9.0, "grouped": 4.0, "naive": 5.0})
    cfg = CFG.model_copy(update={"dtype": "float32"})  # one grouped variant on every CPU
    layer = MoELayer(cfg)
    layer.cache = ChoiceCache(tmp_path / "auto.json")
    x = torch.randn(500, 64)
    choice = layer.choice_for(x)
    assert (choice.path, choice.bucket, choice.source) == ("grouped", 512, "measured")
    assert "grouped 4 ms" in choice.why and layer.kernel_for(x) == "grouped oneDNN GEMMs"
    layer(x)
    layer(torch.randn(600, 64))  # the same bucket: no new measurement
    assert calls == [["fused:vec", "grouped", "naive"]]
    # another layer of the same shape on this machine reads it from disk
    script["grouped"] = 99.0
    again = MoELayer(cfg, seed=1)
    again.cache = ChoiceCache(tmp_path / "auto.json")
    assert again.choice_for(x).path == "grouped" and again.choice_for(x).source == "cached"
    assert len(calls) == 1
    # a new bucket, or another dtype, is measured on its own
    script.update({"fused:vec": 1.0})
    assert again.choice_for(torch.randn(1, 64)).path == "fused:vec"
    saved = json.loads((tmp_path / "auto.json").read_text())
    assert saved["version"] == autotune.VERSION and len(saved["choices"]) == 2
    assert all('"model"' in key for key in saved["choices"])  # keyed by the CPU


def test_prepare_measures_every_bucket_up_front_and_calls_then_measure_nothing(timings, tmp_path):
    script, calls = timings
    script.update({"fused:vec": 3.0, "grouped": 4.0, "naive": 5.0})
    layer = MoELayer(CFG.model_copy(update={"dtype": "float32"}))
    layer.cache = ChoiceCache(tmp_path / "auto.json")
    got = layer.prepare()
    assert sorted(got) == list(autotune.BUCKETS) and len(calls) == len(autotune.BUCKETS)
    assert {c.path for c in got.values()} == {"fused:vec"}
    for tokens in (1, 7, 100, 700, 3000):
        layer(torch.randn(tokens, 64))
    assert len(calls) == len(autotune.BUCKETS)  # no call measured again
    assert layer.prepare([16])[16].path == "fused:vec" and len(calls) == len(autotune.BUCKETS)


def test_a_close_call_is_timed_again_and_the_longer_timing_decides(timings, tmp_path, monkeypatch):
    """Paths within 10% of the fastest in the first pass are timed again, longer (what a
    noisy machine flips is a close call); a clear winner is not."""
    script, calls = timings
    script.update({"fused:vec": 5.0, "grouped": 4.8, "naive": 9.0})
    cfg = CFG.model_copy(update={"dtype": "float32"})
    layer = MoELayer(cfg)
    layer.cache = ChoiceCache(tmp_path / "auto.json")
    first = moe_mod.time_paths

    def second_pass_reverses(fns, **kw):
        if len(calls) == 1:  # the second pass: the fused kernel was the faster after all
            script.update({"fused:vec": 4.0, "grouped": 4.6})
        return first(fns, **kw)

    monkeypatch.setattr(moe_mod, "time_paths", second_pass_reverses)
    choice = layer.choice_for(torch.randn(128, 64))
    assert calls == [["fused:vec", "grouped", "naive"], ["fused:vec", "grouped"]]
    assert choice.path == "fused:vec" and choice.ms == {
        "fused:vec": 4.0,
        "grouped": 4.6,
        "naive": 9.0,
    }
    script.update({"fused:vec": 9.0, "grouped": 4.0})  # a clear winner: one pass
    layer.choice_for(torch.randn(2048, 64))
    assert calls[2:] == [["fused:vec", "grouped", "naive"]]


def test_a_path_twice_as_slow_as_the_fastest_in_the_first_round_is_timed_no_more(monkeypatch):
    """`drop` (auto's measuring) stops timing what cannot win after one round; without
    it (the benchmark) every path is timed in every round, in a rotating order."""
    clock = [0.0]
    monkeypatch.setattr(autotune.time, "perf_counter", lambda: clock[0])
    ran: list[str] = []

    def fn(name: str, cost: float):
        def call() -> None:
            ran.append(name)
            clock[0] += cost

        return call

    fns = {"fast": fn("fast", 10.0), "near": fn("near", 19.0), "slow": fn("slow", 21.0)}
    per = autotune.time_paths(fns, rounds=3, drop=2.0)
    assert per == {"fast": [10.0] * 3, "near": [19.0] * 3, "slow": [21.0]}
    assert ran.count("slow") == 4 and ran.count("near") == 12  # a warm-up and 3 per round
    ran.clear()
    assert autotune.time_paths(fns, rounds=3)["slow"] == [21.0] * 3
    assert ran[::4] == ["fast", "near", "slow", "near", "slow", "fast", "slow", "fast", "near"]


def test_a_broken_cache_file_is_measured_again_not_a_crash(timings, tmp_path, caplog):
    script, calls = timings
    script.update({"fused:vec": 2.0, "grouped": 3.0, "grouped:float32": 3.5, "naive": 5.0})
    path = tmp_path / "auto.json"
    path.write_text("{ half a file")
    layer = MoELayer(CFG)
    layer.cache = ChoiceCache(path)
    assert layer.choice_for(torch.randn(16, 64).bfloat16()).path == "fused:vec"
    assert "measuring again" in caplog.text
    assert json.loads(path.read_text())["choices"]  # rewritten whole


ZEN = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu avx2 avx512f avx512_bf16

processor\t: 1
cpu family\t: 99
"""


def test_two_cpus_behind_one_masked_name_are_told_apart(tmp_path):
    """Cloud VMs on Zen 4 and Zen 5 hosts both say "AMD EPYC" with the same deciding
    flags; a choice measured on one must not be reused on the other."""
    zen4, zen5 = tmp_path / "zen4", tmp_path / "zen5"
    zen4.write_text(ZEN.format(family=25, model=17))
    zen5.write_text(ZEN.format(family=26, model=2))
    a, b = autotune.cpuinfo(str(zen4)), autotune.cpuinfo(str(zen5))
    assert (a.model, a.flags) == (b.model, b.flags) == ("AMD EPYC", b.flags)
    assert a.ident == "family 25 model 17 stepping 1"  # the first processor's numbers
    assert b.ident == "family 26 model 2 stepping 1"
    assert "avx512_bf16" in a.flags and "99" not in a.ident
    # the live machine's line and key carry its numbers where it has them
    info = autotune.cpuinfo()
    assert autotune.cpu()["id"] == info.ident
    assert (info.ident in autotune.cpu_line()) and autotune.cpu()["model"] in autotune.cpu_line()


def test_two_processes_saving_choices_keep_each_others(tmp_path):
    """Two engines on one machine each measure a layer: the file ends with both
    choices, not with whichever process wrote last."""
    path = tmp_path / "auto.json"
    first, second = ChoiceCache(path), ChoiceCache(path)
    assert first.get("k1") is None and second.get("k2") is None  # both read the empty file
    first.put("k1", autotune.Choice(path="grouped", bucket=16, source="measured"))
    second.put("k2", autotune.Choice(path="fused:vec", bucket=512, source="measured"))
    saved = json.loads(path.read_text())["choices"]
    assert {k: v["path"] for k, v in saved.items()} == {"k1": "grouped", "k2": "fused:vec"}
    assert ChoiceCache(path).get("k1").path == "grouped"


def test_forcing_a_path_runs_it_without_measuring(timings):
    _, calls = timings
    x = torch.randn(8, 64)
    for backend, path in (("fused", "fused:vec"), ("grouped", "grouped"), ("naive", "naive")):
        layer = MoELayer(CFG.model_copy(update={"backend": backend, "dtype": "float32"}))
        assert layer.path_for(x) == path and layer.choice_for(x).source == "configured"
    assert calls == []
    # checked once per (device, dtype, bucket), not on every call
    layer = MoELayer(CFG.model_copy(update={"backend": "fused", "dtype": "float32"}))
    checks: list[int] = []
    check = layer.fused_unavailable
    layer.fused_unavailable = lambda x: checks.append(1) or check(x)  # type: ignore[method-assign]
    for _ in range(3):
        layer(x)
    assert checks == [1] and layer.path_for(torch.randn(500, 64)) == "fused:vec"
    assert checks == [1, 1]  # a new bucket
    half = MoELayer(CFG.model_copy(update={"backend": "grouped", "dtype": "float16"}))
    with pytest.raises(MoEBackendError, match="bfloat16 or float32"):
        half(torch.randn(4, 64).half())


@pytest.mark.parametrize("compute", ["layer", "float32"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("tokens", [1, 7, 64])
@pytest.mark.parametrize("top_k", [2, 3])  # 3: summed in float32, not the layer's dtype
def test_the_grouped_path_matches_the_reference(dtype, tokens, top_k, compute, monkeypatch):
    """In either compute dtype: a bfloat16 layer's grouped path in float32 (where bfloat16
    GEMMs are emulated or, on AVX2 only, raise) still returns bfloat16."""
    import kernels.grouped

    if compute == "layer" and dtype == "bfloat16" and not kernels.grouped.bf16_gemms():
        pytest.skip("this CPU's oneDNN has no bfloat16 GEMMs")
    monkeypatch.setattr(kernels.grouped, "native_bf16", lambda: compute == "layer")
    cfg = MoEConfig(
        hidden=64,
        intermediate=72,
        experts=5,
        top_k=top_k,
        zero_experts=1,
        shared_experts=1,
        dtype=dtype,
        backend="grouped",
    )
    layer = MoELayer(cfg, seed=tokens)
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(tokens))
    x = x.to(layer.w13.dtype)
    out = layer(x)
    assert out.dtype == x.dtype
    f32 = dtype == "bfloat16" and compute == "float32"
    assert layer.path_for(x) == ("grouped:float32" if f32 else "grouped")
    assert set(layer._grouped) == {layer.path_for(x)}  # packed what it ran
    y, ref = out.float(), layer.reference(x).float()
    tol = 0.03 * float(ref.abs().max()) + 0.02 if dtype == "bfloat16" else 1e-4
    assert float((y - ref).abs().max()) <= tol
    packs = layer.packs
    layer(x)
    assert layer.packs == packs  # packed once
    with torch.no_grad():
        layer.w2.mul_(2)
    y2 = layer(x).float()
    assert (
        layer.packs == packs + 1 and float((y2 - layer.reference(x).float()).abs().max()) <= 2 * tol
    )


@pytest.mark.parametrize("native", [True, False])
def test_auto_weighs_the_grouped_path_in_float32_for_a_bfloat16_layer(
    native, timings, tmp_path, monkeypatch
):
    """Where bfloat16 GEMMs are emulated (AVX-512 without AVX512_BF16) the float32 variant
    can be the fastest; auto measures both variants that run here, whatever the guess."""
    import kernels.grouped

    monkeypatch.setattr(kernels.grouped, "native_bf16", lambda: native)
    script, calls = timings
    script.update({"fused:vec": 9.0, "grouped": 6.0, "grouped:float32": 3.0, "naive": 12.0})
    layer = MoELayer(CFG)
    layer.cache = ChoiceCache(tmp_path / "auto.json")
    x = torch.randn(300, 64).bfloat16()
    bf16 = kernels.grouped.bf16_gemms()  # False on an AVX2-only CPU: float32 only
    assert layer.paths(x) == [
        "fused:vec",
        *(["grouped"] if bf16 and native else []),
        "grouped:float32",
        *(["grouped"] if bf16 and not native else []),
        "naive",
    ]
    choice = layer.choice_for(x)
    assert choice.path == "grouped:float32" and "grouped:float32 3 ms" in choice.why
    assert layer.kernel_for(x) == "grouped oneDNN GEMMs (float32)"
    assert set(layer._grouped) == {"grouped:float32"}  # the others it measured: dropped
    y, ref = layer(x).float(), layer.reference(x).float()
    assert (
        y.dtype == torch.float32
        and float((y - ref).abs().max()) <= 0.03 * float(ref.abs().max()) + 0.02
    )
    forced = MoELayer(CFG.model_copy(update={"backend": "grouped"}))
    assert forced.path_for(x) == ("grouped" if bf16 and native else "grouped:float32")
    # a float32 layer has one grouped variant
    assert MoELayer(CFG.model_copy(update={"dtype": "float32"})).paths(x.float()) == [
        "fused:vec",
        "grouped",
        "naive",
    ]


def test_no_float32_copy_of_the_experts_where_memory_is_short(monkeypatch, caplog):
    """A bfloat16 layer's float32 variant doubles its experts' size, kept while chosen:
    on a machine without room for twice that copy, neither `auto` nor a forced `grouped`
    makes it (on a CPU that runs bfloat16 GEMMs the bfloat16 variant runs instead; on one
    that cannot, `grouped` says why), and the log says what was left out."""
    import kernels.grouped

    monkeypatch.setattr(kernels.grouped, "native_bf16", lambda: False)  # float32 first
    monkeypatch.setattr(moe_mod, "cpu_isas", lambda cfg, dtype: ["vec"])  # AMX or not
    # MKL's forms left out here (x86 wheels only); the compiled kernel's bfloat16 form,
    # which needs no copy: tests/unit/test_moe_native.py
    monkeypatch.setattr(kernels.grouped, "mkl_sgemm", lambda: False)
    layer = MoELayer(CFG)
    x = torch.randn(8, 64).bfloat16()
    copy = (layer.w13.numel() + layer.w2.numel()) * 4
    monkeypatch.setattr(moe_mod, "available_bytes", lambda: 2 * copy)  # just room
    assert "grouped:float32" in layer.paths(x)
    monkeypatch.setattr(moe_mod, "available_bytes", lambda: 2 * copy - 1)
    with caplog.at_level("WARNING", logger="kernels.moe"):
        paths = layer.paths(x)
    assert "grouped:float32" not in paths and "would not fit twice" in caplog.text
    forced = MoELayer(CFG.model_copy(update={"backend": "grouped"}))
    if kernels.grouped.bf16_gemms():
        assert paths == ["fused:vec", "grouped", "naive"]
        assert forced.path_for(x) == "grouped" and not forced._grouped
    else:
        assert paths == ["fused:vec", "naive"]
        with pytest.raises(MoEBackendError, match="float32 copy of the experts would not fit"):
            forced.path_for(x)
    # a float32 layer makes no wider copy: its grouped path stays
    f32 = MoELayer(CFG.model_copy(update={"dtype": "float32"}))
    assert "grouped" in f32.paths(x.float())


@pytest.mark.skipif(not __import__("kernels.grouped").grouped.mkl_sgemm(), reason="no MKL here")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("top_k", [2, 3])
def test_auto_weighs_the_grouped_path_on_mkl_and_it_matches_the_reference(
    dtype, top_k, timings, tmp_path, monkeypatch
):
    """Where MKL's packed sgemm is the fastest (an Intel Xeon without AMX), auto runs the
    grouped path on it: float32 GEMMs on weights packed once, whatever each expert's rows."""
    import kernels.grouped
    import kernels.native

    monkeypatch.setattr(kernels.grouped, "mkl_sgemm", lambda: True)
    monkeypatch.setattr(kernels.native, "kernel", lambda: None)  # its ATen-op form
    monkeypatch.setattr(kernels.grouped, "MKL_ROWS", 16)  # blocks cut into pieces, unequal
    script, calls = timings
    script.update({"fused:vec": 9.0, "grouped": 6.0, "grouped:float32": 5.0, "naive": 12.0})
    script["grouped:mkl"] = 3.0
    cfg = MoEConfig(hidden=64, intermediate=72, experts=5, top_k=top_k, zero_experts=1, dtype=dtype)
    layer = MoELayer(cfg, seed=top_k)
    layer.cache = ChoiceCache(tmp_path / "auto.json")
    for tokens in (1, 7, 64, 300):
        x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(tokens))
        x = x.to(layer.w13.dtype)
        assert "grouped:mkl" in layer.paths(x) and layer.path_for(x) == "grouped:mkl"
        assert layer.kernel_for(x) == "grouped MKL packed sgemm (float32)"
        y, ref = layer(x), layer.reference(x)
        assert y.dtype == x.dtype
        tol = 0.03 * float(ref.abs().max()) + 0.02 if dtype == "bfloat16" else 1e-4
        assert float((y.float() - ref.float()).abs().max()) <= tol
    assert set(layer._grouped) == {"grouped:mkl"}  # the others it measured: dropped
    packs = layer.packs
    with torch.no_grad():
        layer.w13.mul_(0.5)
    y = layer(x).float()
    assert layer.packs == packs + 1 and float((y - layer.reference(x).float()).abs().max()) <= tol
    # a forced `grouped` stays on oneDNN
    forced = MoELayer(cfg.model_copy(update={"backend": "grouped"}))
    assert forced.path_for(x) != "grouped:mkl"


def test_mkl_is_left_out_where_its_packed_weights_do_not_give_the_matmul(monkeypatch):
    """`pack` packs each expert's weights once for any row count: a library whose packed
    format depends on the rows it was packed for would give wrong answers, so the check
    computes at other row counts and, on a mismatch, MKL is not weighed at all."""
    import kernels.grouped

    if not torch.backends.mkl.is_available():
        assert kernels.grouped.mkl_sgemm.__wrapped__() is False
        return
    assert kernels.grouped.mkl_sgemm.__wrapped__() is True
    real = kernels.grouped._mkl_linear

    def right_only_for_the_rows_packed_for(a, packed, shape):
        out = real(a, packed, shape)
        return out if a.shape[0] == kernels.grouped.MKL_ROWS else out + 1.0

    monkeypatch.setattr(kernels.grouped, "_mkl_linear", right_only_for_the_rows_packed_for)
    assert kernels.grouped.mkl_sgemm.__wrapped__() is False


def test_summarise_gives_each_figure_its_range_and_keeps_what_no_run_measured():
    """`bench moe --runs N`: per token count each figure's [lowest, highest], None where no
    run measured it (no grouped path, no reference beyond its limit), the paths auto chose
    with their counts (most first), each path's worst error; each run's rows kept."""
    from kernels.bench import summarise

    def run(auto_ms: float, path: str, err: float) -> dict:
        row = {"tokens": 4096, "auto_ms": auto_ms, "grouped_ms": None, "auto_path": path}
        row |= {"reference_ms": None, "max_abs_error_by_path": {"auto": err, "fused": 0.01}}
        return {"cpu_line": "a CPU", "rounds": 2, "rows": [row]}

    runs = [run(3.0, "fused:vec", 0.02), run(2.5, "grouped", 0.03), run(2.7, "grouped", 0.01)]
    got = summarise(runs)
    assert got["cpu_line"] == "a CPU" and got["rounds"] == 2 and got["runs"] == 3
    (row,) = got["rows"]
    assert row["tokens"] == 4096 and row["auto_ms"] == [2.5, 3.0]
    assert row["grouped_ms"] is None and row["reference_ms"] is None
    assert list(row["auto_paths"].items()) == [("grouped", 2), ("fused:vec", 1)]
    assert row["max_abs_error_by_path"] == {"auto": 0.03, "fused": 0.01}
    assert got["each_run"] == [r["rows"] for r in runs]
