from __future__ import annotations

import sys
import textwrap

import pytest

from orchestrator.config import (
    ConclaveConfig,
    ExpertConfig,
    Role,
    Sampling,
    load_config,
    parse_config,
)
from orchestrator.errors import ConfigError

GOOD = textwrap.dedent(
    """
    cluster:
      num_cpus: 2
    pool:
      memory_budget_gb: 6
      experts:
        - name: smol
          backend:
            type: vllm
            model: /models/smollm2
            engine_args: {dtype: bfloat16, max_model_len: 2048, kv_cache_memory_bytes: 67108864}
          sampling: {temperature: 0.7, max_tokens: 128}
          resources: {num_cpus: 0.5, memory_gb: 1.5}
          roles: [expert, aggregator, keywords]
        - name: gpt
          backend:
            type: remote
            model: openai/gpt-4o-mini
            api_base: http://127.0.0.1:8000/v1
            api_key_env: OPENAI_API_KEY
    """
)


def test_yaml_and_python_build_the_same_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert [e.name for e in cfg.pool.experts] == ["smol", "gpt"]
    smol = cfg.pool.expert("smol")
    assert smol.backend.engine_args["max_model_len"] == 2048
    assert smol.roles == [Role.EXPERT, Role.AGGREGATOR, Role.KEYWORDS]
    assert cfg.pool.expert("gpt").roles == [Role.EXPERT]
    rebuilt = ConclaveConfig(
        cluster={"num_cpus": 2},
        pool={"memory_budget_gb": 6, "experts": [e.model_dump() for e in cfg.pool.experts]},
    )
    assert rebuilt == cfg


def _error(data) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    return str(ei.value)


def _pool(**expert):
    base = {"name": "a", "backend": {"type": "fake"}}
    base.update(expert)
    return {"pool": {"experts": [base]}}


def test_bad_backend_type_names_field_value_and_allowed():
    msg = _error(_pool(backend={"type": "tgi", "model": "x"}))
    assert "pool.experts.0.backend" in msg
    assert "'tgi'" in msg
    assert "'vllm'" in msg and "'remote'" in msg


def test_unknown_field_is_named():
    msg = _error(_pool(temprature=0.3))
    assert "pool.experts.0.temprature" in msg and "unknown field" in msg


def test_out_of_range_value_names_field_and_bound():
    msg = _error(_pool(sampling={"temperature": -1}))
    assert "pool.experts.0.sampling.temperature" in msg
    assert "greater than or equal to 0" in msg and "-1" in msg


def test_a_fallback_that_is_not_an_expert_is_named_with_the_choices():
    data = {**_pool(), "routing": {"fallback": "smollm3"}}
    msg = _error(data)
    assert "routing.fallback 'smollm3' is not an expert" in msg and "leave it unset" in msg


def test_duplicate_expert_names_rejected():
    data = {"pool": {"experts": [{"name": "a", "backend": {"type": "fake"}}] * 2}}
    assert "used twice" in _error(data)


def test_model_inside_engine_args_rejected():
    msg = _error(_pool(backend={"type": "vllm", "model": "m", "engine_args": {"model": "n"}}))
    assert "engine_args" in msg and "'model'" in msg


@pytest.mark.parametrize("dtype", ["bf16", "fp32", 16])
def test_a_dtype_vllm_does_not_know_is_named_with_the_choices(dtype):
    msg = _error(_pool(backend={"type": "vllm", "model": "m", "engine_args": {"dtype": dtype}}))
    assert f"engine_args.dtype {dtype!r} is not one vLLM knows" in msg
    assert "bfloat16" in msg and "float32" in msg and "leave it out" in msg


@pytest.mark.parametrize("dtype", ["auto", "BFloat16", "half", "float32"])
def test_a_dtype_vllm_knows_is_kept(dtype):
    cfg = parse_config(
        _pool(backend={"type": "vllm", "model": "m", "engine_args": {"dtype": dtype}})
    )
    assert cfg.pool.experts[0].backend.engine_args["dtype"] == dtype


def test_bad_name_and_url_and_empty_pool():
    assert "pool.experts.0.name" in _error(_pool(name="has space"))
    msg = _error(_pool(backend={"type": "remote", "model": "openai/x", "api_base": "localhost:1"}))
    assert "api_base" in msg and "http://" in msg
    assert "pool.experts" in _error({"pool": {"experts": []}})
    assert "mapping" in _error(["not", "a", "mapping"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    # a binary file given by mistake, or a folder: named, not a traceback
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match="model.bin: not valid YAML or JSON"):
        load_config(binary)
    with pytest.raises(ConfigError, match="is a folder; give the path of a YAML or JSON file"):
        load_config(tmp_path)


def test_every_field_has_a_description():
    schema = ConclaveConfig.model_json_schema()
    missing = []
    for name, definition in schema.get("$defs", {}).items():
        for field, spec in definition.get("properties", {}).items():
            if "description" not in spec:
                missing.append(f"{name}.{field}")
    for field, spec in schema["properties"].items():
        if "description" not in spec:
            missing.append(field)
    assert not missing, missing


def test_sampling_override_merges_only_set_fields():
    from orchestrator.config import SamplingOverride

    e = ExpertConfig(
        name="a", backend={"type": "fake"}, sampling={"temperature": 0.7, "max_tokens": 9}
    )
    merged = e.sampling.merged(SamplingOverride(max_tokens=3))
    assert (merged.temperature, merged.max_tokens) == (0.7, 3)


# ---- backends as plug-ins ---------------------------------------------------------------

PLUGIN = textwrap.dedent(
    '''
    """A backend outside the package: registers itself when imported."""
    from typing import Literal

    from pydantic import Field

    from orchestrator.config import BackendConfig
    from workers.backend import ExpertBackend, register_backend
    from workers.batch import GenerationResult


    class EchoConfig(BackendConfig):
        type: Literal["echo-test"] = Field("echo-test", description="Echoes the prompt.")
        greeting: str = Field("hi", description="Put before the prompt.")


    class EchoBackend(ExpertBackend):
        resident = False

        def __init__(self, config, service):
            super().__init__(config, service)
            self._loaded = False

        @property
        def loaded(self):
            return self._loaded

        def load(self):
            self._loaded = True

        def unload(self):
            self._loaded = False

        def generate(self, requests):
            greeting = self.config.backend.greeting
            return [
                GenerationResult(item_id=r.item_id, expert=self.name, text=f"{greeting} {r.prompt}")
                for r in requests
            ]


    register_backend("echo-test", EchoBackend, EchoConfig)
    '''
)

PLUGIN_CONFIG = textwrap.dedent(
    """
    plugins: [conclave_echo_plugin]
    pool:
      experts:
        - name: echo
          backend: {type: echo-test, greeting: hello}
        - name: canned
          backend: {type: fake}
    """
)


@pytest.fixture
def echo_plugin(tmp_path, monkeypatch):
    """`conclave_echo_plugin` importable from tmp_path; its registrations undone after."""
    from orchestrator.config import BACKEND_CONFIGS
    from workers.backend import BACKENDS

    (tmp_path / "conclave_echo_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    BACKENDS.remove("echo-test")
    BACKEND_CONFIGS.remove("echo-test")
    sys.modules.pop("conclave_echo_plugin", None)


def test_plugin_backend_validates_from_yaml_and_serves(echo_plugin):
    from workers.backend import backend_class
    from workers.batch import GenerationRequest
    from workers.pool import ExpertPool

    path = echo_plugin / "c.yaml"
    path.write_text(PLUGIN_CONFIG)
    assert "conclave_echo_plugin" not in sys.modules
    cfg = load_config(path)
    plugin = sys.modules["conclave_echo_plugin"]
    echo = cfg.pool.expert("echo")
    assert cfg.plugins == ["conclave_echo_plugin"]
    assert isinstance(echo.backend, plugin.EchoConfig)
    assert echo.backend.greeting == "hello"
    assert backend_class("echo-test") is plugin.EchoBackend
    # the plug-in's fields survive a round trip through a dump (a Serve replica's config)
    dumped = cfg.model_dump(mode="json")
    assert dumped["pool"]["experts"][0]["backend"] == {"type": "echo-test", "greeting": "hello"}
    assert parse_config(dumped) == cfg
    with ExpertPool(cfg) as pool:
        (res,) = pool.run([GenerationRequest(item_id="1", expert="echo", prompt="there")])
    assert res.text == "hello there"
    # a misspelt field of the plug-in's schema is named like a built-in's
    path.write_text(PLUGIN_CONFIG.replace("greeting:", "greting:"))
    msg = str(pytest.raises(ConfigError, load_config, path).value)
    assert "pool.experts.0.backend.echo-test.greting" in msg and "unknown field" in msg


def test_unknown_backend_type_lists_registered_types_and_the_fix(echo_plugin):
    import conclave_echo_plugin  # noqa: F401  (registers echo-test)

    msg = _error(_pool(backend={"type": "tgi", "model": "x"}))
    assert "pool.experts.0.backend" in msg and "'tgi'" in msg
    for name in ("'echo-test'", "'fake'", "'remote'", "'vllm'"):
        assert name in msg
    assert "plugins" in msg
    assert "needs a `type`" in _error(_pool(backend={"model": "x"}))


def test_unimportable_plugin_is_a_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(PLUGIN_CONFIG.replace("conclave_echo_plugin", "no_such_conclave_plugin"))
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert str(path) in msg and "plugins.0" in msg
    assert "'no_such_conclave_plugin' cannot be imported" in msg and "PYTHONPATH" in msg


def test_register_backend_refuses_a_taken_name_and_a_mismatched_schema():
    from typing import Literal

    from orchestrator.config import BACKEND_CONFIGS, BackendConfig, FakeBackendConfig
    from workers.backend import BACKENDS, register_backend
    from workers.fake import FakeBackend

    with pytest.raises(ConfigError, match="'fake' is already registered"):
        register_backend("fake", FakeBackend, FakeBackendConfig)

    class Other(BackendConfig):
        type: Literal["other"] = "other"

    with pytest.raises(ConfigError, match="defaults to 'other'"):
        register_backend("mine", FakeBackend, Other)
    with pytest.raises(ConfigError, match="must subclass"):
        register_backend("mine", FakeBackend, Sampling)
    assert "mine" not in BACKENDS and "mine" not in BACKEND_CONFIGS


def test_resources_for_placement_name_custom_resources_accelerators_and_labels():
    """What an expert needs of one node: its CPUs and GPUs, custom resources, the
    accelerator type as the resource Ray gives nodes that have one; a custom amount that
    is not positive, or one named like a built-in, is refused naming it."""
    from orchestrator.config.base import Resources
    from workers.placement import bundle

    res = Resources(
        num_cpus=2,
        num_gpus=1,
        custom={"fast_disk": 1},
        accelerator_type="A100",
        node_labels={"zone": "a"},
    )
    assert bundle(res) == {
        "CPU": 2,
        "GPU": 1,
        "fast_disk": 1,
        "accelerator_type:A100": 0.001,
    }
    assert bundle(Resources()) == {"CPU": 0.25}  # no zero amounts: Ray refuses them
    for bad in ({"fast_disk": 0}, {"GPU": 1}):
        with pytest.raises(ValueError, match="give a positive amount of a custom resource"):
            Resources(custom=bad)
