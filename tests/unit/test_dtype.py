"""The dtype an engine runs in on a CPU (`workers.dtype`): float32 where the CPU has no
native bf16 and the config leaves the dtype open, if it fits; otherwise as asked."""

from __future__ import annotations

import json

import pytest

from workers.dtype import choose_dtype, float32_bytes

GiB = 2**30


def checkpoint(tmp_path, dtype="bfloat16", size=100 * 2**20, **config):
    """A model folder of `size` bytes of weights saved in `dtype`."""
    (tmp_path / "config.json").write_text(json.dumps({"dtype": dtype, **config}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * size)
    return str(tmp_path)


def choose(model, args, **kw):
    where = {"on_cpu": True, "native_bf16": False, "memory_limit": GiB, "memory_free": 8 * GiB}
    return choose_dtype(model, args, **(where | kw))


def test_float32_where_the_cpu_has_no_native_bf16_and_it_fits(tmp_path):
    model = checkpoint(tmp_path)
    args = {"max_model_len": 512, "kv_cache_memory_bytes": 32 * 2**20}
    got = choose(model, args)
    assert got.dtype == "float32" and "no native bf16" in got.why
    # the KV cache keeps its tokens: twice the bytes in float32
    assert got.engine_args == {**args, "dtype": "float32", "kv_cache_memory_bytes": 64 * 2**20}
    assert args == {"max_model_len": 512, "kv_cache_memory_bytes": 32 * 2**20}  # not changed
    assert choose(model, {"dtype": "AUTO"}).dtype == "float32"


@pytest.mark.parametrize(
    "kw, args, kept",
    [
        ({"native_bf16": True}, {}, "native on this CPU"),
        ({"on_cpu": False}, {}, ""),
        ({}, {"dtype": "bfloat16"}, "as engine_args.dtype says"),
        ({}, {"dtype": "float16"}, "as engine_args.dtype says"),
    ],
)
def test_a_named_dtype_a_native_bf16_cpu_and_a_gpu_are_left_as_they_are(tmp_path, kw, args, kept):
    got = choose(checkpoint(tmp_path), args, **kw)
    assert got.engine_args == args and (kept in got.why if kept else got.why == "")


def test_float32_only_where_it_fits_the_experts_memory_and_the_memory_free(tmp_path):
    model = checkpoint(tmp_path, size=400 * 2**20)  # 0.8 GiB in float32
    kv = {"kv_cache_memory_bytes": 128 * 2**20}  # 0.25 GiB in float32
    over = choose(model, kv, memory_limit=GiB)
    assert over.engine_args == kv  # vLLM's bf16, said why
    assert "1.0 GiB, over resources.memory_gb (1.0 GiB)" in over.why
    tight = choose(model, kv, memory_limit=None, memory_free=GiB)
    assert tight.engine_args == kv and "over memory free now (0.8 GiB)" in tight.why
    assert choose(model, kv, memory_limit=2 * GiB).dtype == "float32"


def test_float32_size_from_the_checkpoint_or_none_where_it_cannot_be_told(tmp_path):
    assert float32_bytes(checkpoint(tmp_path / "a", size=10)) == 20
    assert float32_bytes(checkpoint(tmp_path / "b", dtype="float32", size=10)) == 10
    quantized = checkpoint(tmp_path / "c", quantization_config={"quant_method": "gptq"})
    assert float32_bytes(quantized) is None
    assert float32_bytes("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id
    assert float32_bytes(checkpoint(tmp_path / "d", dtype="int8")) is None
    got = choose("HuggingFaceTB/SmolLM2-135M-Instruct", {})
    assert got.engine_args == {} and "cannot be told" in got.why


@pytest.fixture(autouse=True)
def _folders(tmp_path):
    for sub in "abcd":
        (tmp_path / sub).mkdir()


def test_a_profile_made_on_a_cpu_of_the_other_kind_is_not_reused(monkeypatch):
    """Answers in float32 and in bf16 differ a little: where the dtype is left open, the
    profile cache's key holds which one this CPU runs; a named dtype's key does not."""
    import workers.dtype
    from orchestrator.config import parse_config
    from orchestrator.profiling import profile_key

    def key(engine_args, native):
        monkeypatch.setattr(workers.dtype, "cpu_native_bf16", lambda: native)
        vllm = {"type": "vllm", "model": "org/model", "engine_args": engine_args}
        cfg = parse_config({"pool": {"experts": [{"name": "a", "backend": vllm}]}})
        return profile_key(cfg, [], "skillmix")

    assert key({}, True) != key({}, False)
    assert key({"dtype": "bfloat16"}, True) == key({"dtype": "bfloat16"}, False)
