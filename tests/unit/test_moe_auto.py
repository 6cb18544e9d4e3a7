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
    """Scripted timings (ms per path) for auto's measurement, and how often it measured."""
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
    layer = MoELayer(CFG)
    layer.cache = ChoiceCache(tmp_path / "auto.json")
    x = torch.randn(500, 64).bfloat16()
    choice = layer.choice_for(x)
    assert (choice.path, choice.bucket, choice.source) == ("grouped", 512, "measured")
    assert "grouped 4 ms" in choice.why and layer.kernel_for(x) == "grouped oneDNN GEMMs"
    layer(x)
    layer(torch.randn(600, 64).bfloat16())  # the same bucket: no new measurement
    assert calls == [["fused:vec", "grouped", "naive"]]
    # another layer of the same shape on this machine reads it from disk
    script["grouped"] = 99.0
    again = MoELayer(CFG, seed=1)
    again.cache = ChoiceCache(tmp_path / "auto.json")
    assert again.choice_for(x).path == "grouped" and again.choice_for(x).source == "cached"
    assert len(calls) == 1
    # a new bucket, or another dtype, is measured on its own
    script.update({"fused:vec": 1.0})
    assert again.choice_for(torch.randn(1, 64).bfloat16()).path == "fused:vec"
    saved = json.loads((tmp_path / "auto.json").read_text())
    assert saved["version"] == autotune.VERSION and len(saved["choices"]) == 2
    assert all('"model"' in key for key in saved["choices"])  # keyed by the CPU


def test_a_broken_cache_file_is_measured_again_not_a_crash(timings, tmp_path, caplog):
    script, calls = timings
    script.update({"fused:vec": 2.0, "grouped": 3.0, "naive": 5.0})
    path = tmp_path / "auto.json"
    path.write_text("{ half a file")
    layer = MoELayer(CFG)
    layer.cache = ChoiceCache(path)
    assert layer.choice_for(torch.randn(16, 64).bfloat16()).path == "fused:vec"
    assert "measuring again" in caplog.text
    assert json.loads(path.read_text())["choices"]  # rewritten whole


def test_forcing_a_path_runs_it_without_measuring(timings):
    _, calls = timings
    x = torch.randn(8, 64).bfloat16()
    for backend, path in (("fused", "fused:vec"), ("grouped", "grouped"), ("naive", "naive")):
        layer = MoELayer(CFG.model_copy(update={"backend": backend}))
        assert layer.path_for(x) == path and layer.choice_for(x).source == "configured"
    assert calls == []
    half = MoELayer(CFG.model_copy(update={"backend": "grouped", "dtype": "float16"}))
    with pytest.raises(MoEBackendError, match="bfloat16 or float32"):
        half(torch.randn(4, 64).half())


@pytest.mark.parametrize("bf16_gemms", [True, False])  # False: an AVX2-only CPU
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("tokens", [1, 7, 64])
@pytest.mark.parametrize("top_k", [2, 3])  # 3: summed in float32, not the layer's dtype
def test_the_grouped_path_matches_the_reference(dtype, tokens, top_k, bf16_gemms, monkeypatch):
    """Also where oneDNN has no bfloat16 GEMMs (AVX2 only: asked for them, it raises): a
    bfloat16 layer's grouped path then runs in float32 and still returns bfloat16."""
    import kernels.grouped

    if bf16_gemms and dtype == "bfloat16" and not kernels.grouped.bf16_gemms():
        pytest.skip("this CPU's oneDNN has no bfloat16 GEMMs")
    monkeypatch.setattr(kernels.grouped, "bf16_gemms", lambda: bf16_gemms)
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
    expect = torch.float32 if dtype == "float32" or not bf16_gemms else torch.bfloat16
    assert layer._grouped_weights(x.dtype).dtype == expect
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
