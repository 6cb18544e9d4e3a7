"""A plug-in from outside the package: a toy backend and a toy strategy, registered when
the module a YAML config lists under `plugins` is imported, run through `conclave eval`."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import BACKEND_CONFIGS, load_config
from orchestrator.errors import ConfigError
from orchestrator.files import read_jsonl
from orchestrator.strategies import STRATEGIES
from workers.backend import BACKENDS

runner = CliRunner()

PLUGIN = '''
"""A toy plug-in: an `echo` backend that always answers one letter, and a strategy that
asks the alphabetically first expert alone."""

from typing import ClassVar, Literal

from orchestrator.config import BackendConfig
from orchestrator.strategies import STRATEGIES, Plan, get_strategy
from workers.backend import ExpertBackend, register_backend
from workers.batch import GenerationResult


class EchoConfig(BackendConfig):
    type: Literal["echo"] = "echo"
    letter: str = "A"


class EchoBackend(ExpertBackend):
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
        letter = self.config.backend.letter
        return [
            GenerationResult(item_id=r.item_id, expert=self.name,
                             text=f"The answer is ({letter}).", prompt_tokens=3,
                             completion_tokens=4)
            for r in requests
        ]


class FirstExpert:
    name: ClassVar[str] = "first-expert"
    description: ClassVar[str] = "The alphabetically first expert answers alone."
    needs_profile: ClassVar[bool] = False
    needs_expert: ClassVar[bool] = False
    asks_every_expert: ClassVar[bool] = False
    featured: ClassVar[bool] = False
    monitored: ClassVar[bool] = False

    def plan(self, ctx, items):
        return [Plan([min(ctx.experts)]) for _ in items]

    def combiner(self, ctx):
        return None


register_backend("echo", EchoBackend, EchoConfig)
get_strategy("single")  # the built-ins register first
STRATEGIES.add("first-expert", FirstExpert())
'''

CONFIG = """
plugins: [toy_conclave_plugin]
pool:
  experts:
    - {name: zeta, backend: {type: echo, letter: B}}
    - {name: alpha, backend: {type: echo, letter: C}}
    - name: kw
      backend: {type: fake, answer: "Keywords: arithmetic"}
      roles: [keywords]
routing: {embedder: ngram}
cache_dir: CACHE
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_conclave_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    config = tmp_path / "pool.yaml"
    config.write_text(CONFIG.replace("CACHE", str(tmp_path / "cache")))
    yield config
    for registry in (BACKENDS, BACKEND_CONFIGS):
        registry.remove("echo")
    STRATEGIES.remove("first-expert")
    sys.modules.pop("toy_conclave_plugin", None)


def test_a_plugin_backend_and_strategy_run_through_conclave_eval(plugin, tmp_path):
    cfg = load_config(plugin)  # the plug-in is imported before the experts validate
    assert cfg.pool.expert("zeta").backend.type == "echo"
    assert runner.invoke(app, ["config", "validate", str(plugin)]).exit_code == 0

    out = tmp_path / "run"
    res = runner.invoke(
        app,
        ["eval", "-c", str(plugin), "--limit", "2", "--out", str(out), "--json"]
        + ["--strategy", "first-expert", "--strategy", "majority"],
    )
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out / "results.jsonl")
    mine = [r for r in rows if r["strategy"] == "first-expert"]
    assert mine and len(mine) == len(rows) / 2
    # alpha is first by name, so it answers alone, with its configured letter
    assert all([a["expert"] for a in r["answers"]] == ["alpha"] for r in mine)
    assert all(r["final"] == "C" for r in mine)
    summary = json.loads((out / "summary.json").read_text())
    assert "first-expert" in summary["strategies"]


def test_a_backend_type_nobody_registered_names_the_registered_ones(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text(
        textwrap.dedent(
            """
            pool:
              experts:
                - {name: a, backend: {type: telepathic}}
            """
        )
    )
    with pytest.raises(ConfigError, match=r"telepathic.*not registered.*'fake', 'remote', 'vllm'"):
        load_config(path)
