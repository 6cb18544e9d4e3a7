"""The MoE layer on vLLM's fused CPU kernel against the PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.moe import KERNELS, MoEBackendError, MoEConfig, MoELayer

pytestmark = pytest.mark.real


def _close(y: torch.Tensor, ref: torch.Tensor, dtype: str) -> None:
    y, ref = y.float(), ref.float()
    scale = float(ref.abs().max()) + 1e-6
    tol = 0.03 * scale + 0.02 if dtype == "bfloat16" else 1e-4 * scale + 1e-5
    assert float((y - ref).abs().max()) <= tol, (float((y - ref).abs().max()), tol)


@st.composite
def configs(draw: st.DrawFn) -> tuple[MoEConfig, int]:
    experts = draw(st.integers(1, 8))
    kinds = {
        k: draw(st.integers(0, 2)) for k in ("zero_experts", "copy_experts", "constant_experts")
    }
    routable = experts + sum(kinds.values())
    masked = draw(st.sets(st.integers(0, routable - 1), max_size=routable - 1))
    top_k = draw(st.integers(1, min(4, routable - len(masked))))
    cfg = MoEConfig(
        hidden=draw(st.sampled_from([32, 64, 128])),
        intermediate=draw(st.sampled_from([32, 64, 96, 24, 72])),  # 24, 72: padded to 32s
        experts=experts,
        top_k=top_k,
        renormalize=draw(st.booleans()),
        shared_experts=draw(st.integers(0, 2)),
        masked=tuple(sorted(masked)),
        dtype=draw(st.sampled_from(["bfloat16", "float32"])),
        **kinds,
    )
    return cfg, draw(st.integers(1, 64))


@settings(max_examples=60, deadline=None)
@given(configs(), st.integers(0, 3))
def test_fused_grouped_and_naive_match_the_reference(case, seed):
    cfg, tokens = case
    x = torch.randn(tokens, cfg.hidden, generator=torch.Generator().manual_seed(seed))
    x = x.to(getattr(torch, cfg.dtype))
    ref = MoELayer(cfg, seed=seed).reference(x)
    for backend in ("fused", "grouped", "naive"):
        layer = MoELayer(cfg.model_copy(update={"backend": backend}), seed=seed)
        assert layer.backend_for(x) == backend
        _close(layer(x), ref, cfg.dtype)


def test_a_token_routed_only_to_null_experts_gets_only_the_shared_experts():
    cfg = MoEConfig(
        hidden=64,
        intermediate=64,
        experts=4,
        top_k=2,
        zero_experts=2,
        shared_experts=1,
        masked=(0, 1, 2, 3),
        backend="fused",
    )
    layer = MoELayer(cfg)
    x = torch.randn(8, 64).bfloat16()
    weights, ids = layer.route(x)
    assert set(ids.flatten().tolist()) == {4, 5}  # the null experts only
    _close(layer(x), layer._shared(x), "bfloat16")
    no_shared = MoELayer(cfg.model_copy(update={"shared_experts": 0}))
    assert float(no_shared(x).abs().max()) == 0.0


def test_all_experts_masked_but_one_routes_every_token_to_it():
    cfg = MoEConfig(
        hidden=64,
        intermediate=64,
        experts=8,
        top_k=1,
        masked=(0, 1, 2, 3, 5, 6, 7),
        backend="fused",
    )
    layer = MoELayer(cfg)
    x = torch.randn(16, 64).bfloat16()
    _, ids = layer.route(x)
    assert set(ids.flatten().tolist()) == {4}
    _close(layer(x), layer.reference(x), "bfloat16")


def test_weights_are_prepacked_once_and_again_only_when_they_change():
    layer = MoELayer(MoEConfig(hidden=128, intermediate=128, experts=4, backend="fused"))
    x = torch.randn(32, 128).bfloat16()
    first = layer(x)
    layer(x)
    assert layer.packs == 1
    with torch.no_grad():
        layer.w2.mul_(2)  # new weights: the packed copy is stale
    second = layer(x)
    assert layer.packs == 2
    _close(second, layer.reference(x), "bfloat16")
    assert not torch.equal(first, second)


def test_an_intermediate_width_off_the_kernels_multiple_is_padded_exactly():
    for dtype in ("bfloat16", "float32"):
        cfg = MoEConfig(hidden=64, intermediate=40, experts=4, top_k=2, dtype=dtype)
        layer = MoELayer(cfg.model_copy(update={"backend": "fused"}), seed=1)
        x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1)).to(layer.w13.dtype)
        assert layer.kernel_for(x).startswith("cpu_fused_moe")
        _close(layer(x), layer.reference(x), dtype)


def test_an_unsupported_combination_falls_back_or_says_why():
    x = torch.randn(4, 48).half()  # float16, and 48 is not a multiple of 32
    auto = MoELayer(MoEConfig(hidden=48, intermediate=64, experts=2, dtype="float16"))
    assert auto.backend_for(x) == "naive" and auto.kernel_for(x) == "per-expert loop"
    assert auto.choice_for(x).source == "only"  # nothing to measure
    _close(auto(x), auto.reference(x), "bfloat16")
    fused = MoELayer(
        MoEConfig(hidden=48, intermediate=64, experts=2, dtype="float16", backend="fused")
    )
    with pytest.raises(MoEBackendError, match="divisible by 32"):
        fused(x)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="outside"):
        MoEConfig(hidden=32, intermediate=32, experts=2, masked=(5,))
    with pytest.raises(ValueError, match="top_k=2 but only 1"):
        MoEConfig(hidden=32, intermediate=32, experts=2, masked=(0,))


def test_input_errors_name_the_problem_and_the_fix():
    """x of another shape or dtype than the layer's is refused before any path runs
    (a float32 x into a bfloat16 layer was PyTorch's "expected scalar type" from inside)."""
    layer = MoELayer(MoEConfig(hidden=32, intermediate=32, experts=2))
    with pytest.raises(ValueError, match=r"x must be \[tokens, 32\], got \[2, 3, 32\]"):
        layer(torch.randn(2, 3, 32).bfloat16())
    with pytest.raises(TypeError, match=r"x is float32 .* bfloat16: pass x.to\(torch.bfloat16\)"):
        layer(torch.randn(3, 32))
    assert layer(torch.randn(3, 32).bfloat16()).dtype == torch.bfloat16


def test_bench_moe_prints_paired_and_best_speedups_with_the_machine_drift():
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app

    res = CliRunner().invoke(
        app,
        [
            "bench",
            "moe",
            "--tokens",
            "1,16",
            "--hidden",
            "128",
            "--intermediate",
            "128",
            "--rounds",
            "2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["fused_backend"] == "fused" and out["rounds"] == 2
    assert out["fused_kernel"] in ("cpu_fused_moe (amx)", "cpu_fused_moe (vec)")
    assert out["cpu"]["model"] and out["cpu_line"].startswith(out["cpu"]["model"])
    assert [r["tokens"] for r in out["rows"]] == [1, 16]
    for row in out["rows"]:
        assert all(e < 0.05 for e in row["max_abs_error_by_path"].values())
        # auto ran what it measured fastest there, and says so with the figures
        assert row["auto_path"] in set(KERNELS) - {"reference"}
        assert row["auto_kernel"] == KERNELS[row["auto_path"]]
        assert row["dense_dtype"] in ("bfloat16", "float32")
        assert row["auto_path"] in row["auto_why"] and row["auto_vs_naive"] > 0
        assert row["speedup_vs_naive"] > 0 and row["speedup_vs_naive_best"] > 0
        assert row["machine_drift"] >= 1.0  # the median round against the fastest
    bad = CliRunner().invoke(app, ["bench", "moe", "--tokens", "0,16"])
    assert bad.exit_code != 0 and "positive integers" in bad.output


def test_bench_moe_where_vllms_kernel_cannot_run_benches_the_rest_and_says_why(tmp_path):
    """A hidden width vLLM's CPU kernel does not take (48, not a multiple of 32): its
    figures are None ("-" in the table) with the reason, and auto and the loop still run.
    A GPU this PyTorch cannot see, and a top-k above the experts, are clear errors."""
    import json

    import torch
    from typer.testing import CliRunner

    from orchestrator.cli import app

    args = ["bench", "moe", "--tokens", "1,16", "--hidden", "48", "--intermediate", "40"]
    args += ["--experts", "3", "--rounds", "1", "--out", str(tmp_path / "out.json")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["fused_kernel"].startswith("unavailable: vLLM's cpu_fused_moe needs")
    assert out["fused_backend"] is None
    for row in out["rows"]:
        assert row["fused_ms"] is None and row["auto_vs_fused"] is None
        assert row["auto_path"] != "fused" and row["auto_ms"] > 0 and row["naive_ms"] > 0
        assert "fused" not in row["max_abs_error_by_path"]
        assert all(e < 0.05 for e in row["max_abs_error_by_path"].values())
    assert "unavailable" in " ".join(res.stdout.split())
    ranged = CliRunner().invoke(app, [*args, "--runs", "2"])
    assert ranged.exit_code == 0, ranged.output
    assert json.loads((tmp_path / "out.json").read_text())["rows"][0]["fused_ms"] is None
    few = CliRunner().invoke(app, ["bench", "moe", "--experts", "2", "--top-k", "3"])
    assert few.exit_code == 2 and "--top-k 3" in few.output and "at most 2" in few.output
    if not torch.cuda.is_available():
        gpu = CliRunner().invoke(app, ["bench", "moe", "--device", "cuda"])
        assert gpu.exit_code == 2 and "no CUDA GPU" in gpu.output and "Traceback" not in gpu.output


def test_bench_moe_runs_give_each_figure_a_range_and_fresh_measures_again(tmp_path, monkeypatch):
    """--runs N: each figure's [lowest, highest] over N runs, the paths auto chose with
    their counts, each run's rows; --fresh: auto measures again in every run (and saves
    it), where a plain run reads its cached choice; the table shows the ranges."""
    import json

    from typer.testing import CliRunner

    from kernels.autotune import ChoiceCache
    from orchestrator.cli import app

    monkeypatch.setattr("kernels.moe.CHOICES", ChoiceCache(tmp_path / "auto.json"))
    args = ["bench", "moe", "--tokens", "1,16", "--hidden", "128", "--intermediate", "128"]
    args += ["--rounds", "1"]

    def run(*more: str) -> tuple[str, dict]:
        res = CliRunner().invoke(app, [*args, *more, "--out", str(tmp_path / "out.json")])
        assert res.exit_code == 0, res.output
        return res.stdout, json.loads((tmp_path / "out.json").read_text())

    _, first = run()
    assert all("(measured)" in r["auto_why"] for r in first["rows"])
    assert "runs" not in first and "each_run" not in first  # one run: its own figures
    _, fresh = run("--runs", "2", "--fresh")
    assert fresh["runs"] == 2 and len(fresh["each_run"]) == 2
    assert all("(measured)" in r["auto_why"] for rows in fresh["each_run"] for r in rows)
    for i, row in enumerate(fresh["rows"]):
        each = [rows[i] for rows in fresh["each_run"]]
        assert row["tokens"] == each[0]["tokens"] == each[1]["tokens"]
        for key in ("auto_ms", "fused_ms", "auto_vs_naive", "auto_vs_dense", "machine_drift"):
            assert row[key] == [min(r[key] for r in each), max(r[key] for r in each)]
        assert sum(row["auto_paths"].values()) == 2
        assert set(row["auto_paths"]) == {r["auto_path"] for r in each}
    table, cached = run("--runs", "2")
    assert all("(cached)" in r["auto_why"] for rows in cached["each_run"] for r in rows)
    assert "ranges over 2 runs" in " ".join(table.split())  # the title, maybe wrapped
    assert f"{cached['rows'][0]['auto_ms'][0]:.2f}" in table
    bad = CliRunner().invoke(app, [*args, "--runs", "0"])
    assert bad.exit_code != 0 and "--runs" in bad.output


def test_a_hugging_face_mixtral_block_runs_on_the_fused_kernel_with_its_weights():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    torch.manual_seed(0)
    hf_cfg = MixtralConfig(
        hidden_size=64, intermediate_size=96, num_local_experts=4, num_experts_per_tok=2
    )
    block = MixtralSparseMoeBlock(hf_cfg).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 24, 64)
    with torch.no_grad():
        want = block(x)[0]
        for dtype in ("float32", "bfloat16"):
            layer = MoELayer.from_mixtral(block.to(getattr(torch, dtype)), backend="fused")
            assert layer.cfg.top_k == 2 and layer.backend_for(x[0]) == "fused"
            assert layer.w13.data_ptr() == block.experts.gate_up_proj.data_ptr()  # no copy
            _close(layer(x[0].to(layer.w13.dtype)), want, dtype)
            block.float()
    with pytest.raises(
        ValueError, match=r"w2 has shape \[4, 64, 8\]; this layer needs \[4, 64, 48\]"
    ):
        MoELayer.from_weights(torch.zeros(4, 64), torch.zeros(4, 96, 64), torch.zeros(4, 64, 8), 2)
    with pytest.raises(ValueError, match="MixtralSparseMoeBlock"):
        MoELayer.from_mixtral(torch.nn.Linear(4, 4))
