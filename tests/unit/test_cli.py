from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app

runner = CliRunner()

FAKE = textwrap.dedent(
    """
    pool:
      experts:
        - name: alpha
          backend: {type: fake, answer: "alpha says {prompt}"}
        - name: broken
          backend: {type: fake, fail_load: true}
    """
)


def test_validate_lists_experts(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(FAKE)
    res = runner.invoke(app, ["config", "validate", str(path)])
    assert res.exit_code == 0, res.output
    assert "alpha" in res.output and "broken" in res.output and "valid" in res.output


def test_a_remote_expert_is_shown_without_a_memory_figure(tmp_path):
    """A remote expert's model runs at its provider: no local memory to show ('-'), where
    a local one shows its memory_gb."""
    path = tmp_path / "c.yaml"
    remote = "    - name: far\n      backend: {type: remote, model: openai/x}\n"
    path.write_text(FAKE + remote)
    res = runner.invoke(app, ["config", "validate", str(path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if "│" in line}
    assert rows["far"].rstrip(" │").endswith("-") and rows["alpha"].rstrip(" │").endswith("1")


def test_validate_names_the_bad_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(FAKE.replace("type: fake, answer", "type: fake, anser"))
    res = runner.invoke(app, ["config", "validate", str(path)])
    assert res.exit_code == 2
    assert "pool.experts.0.backend.fake.anser" in res.output and "unknown field" in res.output


def test_validate_checks_that_local_model_folders_exist_and_hold_a_model(tmp_path):
    """A vLLM expert's local model path that is missing, or a folder without a model's
    config.json, fails validation naming the expert and the fix; a folder with one and a
    Hugging Face id pass."""
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_text("{}")

    def validate(model):
        path = tmp_path / "c.yaml"
        path.write_text(
            "pool:\n  experts:\n    - name: local\n"
            f"      backend: {{type: vllm, model: '{model}'}}\n"
        )
        return runner.invoke(app, ["config", "validate", str(path)], env={"COLUMNS": "200"})

    missing = validate(tmp_path / "gone")
    assert missing.exit_code == 1
    assert "pool.experts[0] (local): model" in missing.output and "does not exist" in missing.output
    empty = validate(tmp_path)
    assert empty.exit_code == 1 and "has no config.json" in empty.output
    assert validate(good).exit_code == 0
    assert validate("HuggingFaceTB/SmolLM2-135M-Instruct").exit_code == 0


def test_validate_with_data_warns_of_experts_whose_context_is_too_short(tmp_path):
    """--data: an expert that would refuse some of the dataset's prompts as too long is
    named, with how many and its limit; the config is still valid (a warning)."""
    rows = [
        {"question": "Short? The options are: (A) yes (B) no", "gold_answer": "A", "category": "c"},
        {
            "question": "Long " * 80 + "? The options are: (A) yes (B) no",
            "gold_answer": "B",
            "category": "c",
        },
    ]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "c.yaml"
    path.write_text(FAKE.replace("fail_load: true", "max_prompt_chars: 300"))
    res = runner.invoke(
        app, ["config", "validate", str(path), "--data", str(data)], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "warning: broken: 1 of 2 prompts" in res.output and "300 characters" in res.output
    assert "alpha:" not in res.output  # no limit, no warning


def test_pool_run_json_reports_each_answer_and_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(FAKE)
    res = runner.invoke(app, ["pool", "run", str(path), "-p", "hi", "-p", "yo", "--json"])
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["expert"], r["text"]) for r in rows if r["text"]] == [
        ("alpha", "alpha says hi"),
        ("alpha", "alpha says yo"),
    ]
    assert [r["error"]["type"] for r in rows if r["error"]] == ["ModelLoadError"] * 2


def test_pool_run_exit_code_reflects_failures(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(FAKE)
    ok = runner.invoke(app, ["pool", "run", str(path), "-p", "hi", "-e", "alpha"])
    assert ok.exit_code == 0 and "alpha says hi" in ok.output
    bad = runner.invoke(app, ["pool", "run", str(path), "-p", "hi"])
    assert bad.exit_code == 1


def test_schema_is_json_with_descriptions():
    res = runner.invoke(app, ["config", "schema"])
    schema = json.loads(res.stdout)
    assert "pool" in schema["properties"]


def test_module_entry_point_prints_help():
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "answer each question with the right expert LLMs" in res.stdout
    for group in ("eval", "serve", "config", "bench", "zoo", "experts", "kernels", "agents"):
        assert group in res.stdout


def test_emit_json_takes_a_dict_or_a_typed_result(tmp_path, capsys):
    from pydantic import BaseModel

    from orchestrator.cli.render import emit_json

    class Figures(BaseModel):
        requests: int
        path: Path

    typed = Figures(requests=3, path=Path("/x"))
    assert emit_json(typed, tmp_path / "a.json", as_json=True) is True
    printed = json.loads(capsys.readouterr().out)
    assert emit_json({"requests": 3, "path": "/x"}, tmp_path / "b.json", as_json=False) is False
    assert capsys.readouterr().out == ""
    assert printed == {"requests": 3, "path": "/x"}
    assert json.loads((tmp_path / "a.json").read_text()) == printed
    assert json.loads((tmp_path / "b.json").read_text()) == printed


def test_resolve_config_reads_the_file_without_building_a_zoo(tmp_path):
    from agents.zoo.default import resolve_config

    path = tmp_path / "c.yaml"
    path.write_text(FAKE)
    events: list[str] = []
    cfg = resolve_config(path, "full", tmp_path / "no-zoo", on_event=events.append)
    assert [e.name for e in cfg.pool.experts] == ["alpha", "broken"]
    assert events == [] and not (tmp_path / "no-zoo").exists()


def test_commands_on_a_missing_zoo_say_how_to_build_it(tmp_path):
    empty = str(tmp_path / "zoo")
    res = runner.invoke(app, ["zoo", "eval", "--dir", empty])
    assert res.exit_code == 2
    assert f"no zoo at {empty}; run `conclave zoo build` first" in res.stderr
    res = runner.invoke(app, ["experts", "list", "--dir", empty, "--gateway", "http://127.0.0.1:9"])
    assert res.exit_code == 2
    assert "run `conclave zoo build`, or pass --config FILE" in res.stderr
    res = runner.invoke(app, ["kernels", "mask", "--experts", "0", "--dir", empty])
    assert res.exit_code == 2 and "no MoE model in the zoo" in res.stderr


@pytest.mark.parametrize(
    "command",
    [["eval"], ["profile"], ["route", "-q", "what is 2+2?"], ["serve"], ["experts", "list"]],
)
def test_zoo_options_with_a_config_are_refused_not_ignored(command, tmp_path):
    """`--zoo`/`--dir` choose the embedded zoo; with `--config` the file gives the experts,
    so one of the two was a mistake: exit 2 naming both, and nothing built or run."""
    path = tmp_path / "c.yaml"
    path.write_text(FAKE)
    zoo = tmp_path / "zoo"
    given = [["--zoo", "reduced"], ["--dir", str(zoo)]]
    if command[0] == "experts":  # it lists a built zoo or a config: no profile to choose
        given = given[1:]
    for extra in given:
        res = runner.invoke(app, [*command, "-c", str(path), *extra])
        assert res.exit_code == 2, res.output
        assert f"{extra[0]} chooses the embedded zoo, but --config {path}" in res.stderr
        assert "drop one or the other" in res.stderr
    assert not zoo.exists()


def test_serve_without_a_config_checks_its_port_before_building_the_zoo(
    tmp_path, monkeypatch, held_port
):
    """Building the embedded zoo takes minutes the first time: a held port is an error at
    once (exit 2 naming it), with no zoo built."""
    import agents.zoo.default as default

    def no_build(*_a, **_kw):
        raise AssertionError("the zoo was built before the port was known to be free")

    monkeypatch.setattr(default, "build_zoo", no_build)
    res = runner.invoke(app, ["serve", "--dir", str(tmp_path / "zoo"), "--port", str(held_port)])
    assert res.exit_code == 2, res.output
    assert f"cannot listen on 127.0.0.1:{held_port}" in res.stderr


def test_route_refuses_a_blank_question_before_any_set_up(tmp_path):
    """The keyword model would invent skills for an empty question: exit 2 naming which,
    before the zoo is built or profiled (`--dir` here holds none)."""
    res = runner.invoke(app, ["route", "--dir", str(tmp_path), "-q", "2+2?", "-q", " \t"])
    assert res.exit_code == 2, res.output
    assert "question 2 is blank" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_agents_history_on_another_file_says_so_and_leaves_it_whole(tmp_path):
    """`--log conclave.yaml` by mistake: had been cut to nothing as a damaged audit log."""
    path = tmp_path / "c.yaml"
    path.write_text(FAKE)
    res = runner.invoke(app, ["agents", "history", "--log", str(path)])
    assert res.exit_code == 2, res.output
    assert "line 2 is not JSON" in res.stderr and "left as it is" in res.stderr
    assert path.read_text() == FAKE


def test_bench_free_agents_checks_its_scenario_before_running():
    res = runner.invoke(app, ["bench", "free-agents", "--requests", "100", "--drop-at", "100"])
    assert res.exit_code == 2 and "--drop-at 100 must come before the end" in res.stderr
    res = runner.invoke(app, ["bench", "free-agents", "--degraded", "1.5"])
    assert res.exit_code == 2 and "--degraded 1.5 is not an accuracy" in res.stderr


def test_serve_applies_its_overrides_and_hands_the_config_to_the_gateway(tmp_path, monkeypatch):
    """The command only resolves the config and its gateway settings; serving is the
    gateway's `serve`, whose ConclaveErrors become the CLI's exit code 2."""
    import orchestrator.gateway
    from orchestrator.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(FAKE)
    calls = []

    def serve(config, *, ensemble, data, ray_serve, on_event):
        calls.append((config.gateway, ensemble, data, ray_serve))
        on_event("serving (fake)")

    monkeypatch.setattr(orchestrator.gateway, "serve", serve, raising=False)
    args = ["serve", "-c", str(path), "--port", "9001", "--no-preload", "--passthrough-only"]
    res = runner.invoke(app, [*args, "-d", "q.jsonl"])
    assert res.exit_code == 0, res.output
    assert "serving (fake)" in res.stderr
    [(gateway, ensemble, data, ray_serve)] = calls
    assert (gateway.host, gateway.port, gateway.preload) == ("127.0.0.1", 9001, False)
    assert (ensemble, data, ray_serve) == (False, "q.jsonl", False)

    def refuse(config, **_kw):
        raise ConfigError("no expert fits")

    monkeypatch.setattr(orchestrator.gateway, "serve", refuse, raising=False)
    res = runner.invoke(app, ["serve", "-c", str(path), "--ray-serve"])
    assert res.exit_code == 2 and "error: no expert fits" in res.stderr


def test_a_stopped_ray_serve_deployment_takes_down_what_it_deployed(monkeypatch):
    """`serve --ray-serve` blocks in Serve's run; Ctrl-C (or SIGTERM, which Ray turns into
    an exit) ends it, and the app it deployed is deleted on the way out, not left running."""
    import pytest
    from ray import serve

    import orchestrator.gateway.ray_serve as rs
    import workers.cluster
    from orchestrator.config import parse_config

    calls: list[str] = []
    monkeypatch.setattr(workers.cluster, "ensure_ray", lambda _c: calls.append("ray"))
    monkeypatch.setattr(serve, "start", lambda **_kw: calls.append("start"))
    monkeypatch.setattr(rs, "gateway_application", lambda *_a: "app")

    def run(app, **kw):
        calls.append("run")
        raise KeyboardInterrupt

    monkeypatch.setattr(serve, "run", run)
    monkeypatch.setattr(rs, "stop_ray_serve", lambda: calls.append("stopped"))
    cfg = parse_config({"pool": {"experts": [{"name": "a", "backend": {"type": "fake"}}]}})
    with pytest.raises(KeyboardInterrupt):
        rs.run_on_ray_serve(cfg, True, "skillmix", "127.0.0.1", 1, blocking=True)
    assert calls == ["ray", "start", "run", "stopped"]


def test_bench_gateway_renders_a_typed_result_without_the_vllm_comparison(monkeypatch):
    from pydantic import BaseModel

    import evals.bench

    class Level(BaseModel):
        concurrency: int
        requests: int
        errors: int = 0
        p50_ms: float = 1.5
        p90_ms: float = 2.0
        p99_ms: float = 3.25
        requests_per_s: float = 900.0

    class Result(BaseModel):
        machine: str = "test box"
        fake_expert: list[Level]
        vllm: dict[str, list[Level]] | None = None
        passthrough_overhead_pct: dict[str, dict[str, float]] | None = None

    def run(levels, requests, *_args, with_vllm, **_kw):
        assert not with_vllm
        return Result(fake_expert=[Level(concurrency=c, requests=requests) for c in levels])

    monkeypatch.setattr(evals.bench, "run_gateway_bench", run)
    res = runner.invoke(app, ["bench", "gateway", "--concurrency", "1,4", "--no-vllm"])
    assert res.exit_code == 0, res.output
    assert "gateway on loopback (test box)" in res.stdout and "3.25" in res.stdout
    assert res.stdout.count("gateway, fake expert") == 2 and "vLLM" not in res.stdout
    res = runner.invoke(app, ["bench", "gateway", "--no-vllm", "--requests", "9", "--json"])
    assert [r["requests"] for r in json.loads(res.stdout)["fake_expert"]] == [9, 9, 9]


def test_without_a_config_the_zoo_is_built_first_and_served(tmp_path, monkeypatch):
    """The embedded default's fallback, with the builder faked: `resolve_config` builds
    the profile (reporting what it built), and the zoo is then found as built."""
    import agents.zoo.default as default
    from agents.zoo.build import PROFILES, ZooEntry, ZooManifest

    root = tmp_path / "zoo"

    class FakeBuilder:
        def __init__(self, root, profile, seed, on_event=None, on_step=None):
            self.root, self.specs, self.on_event, self.on_step = (
                root,
                PROFILES[profile],
                on_event,
                on_step,
            )

        def check_root(self):
            pass

        def build(self):
            manifest = ZooManifest(updated="now", skillmix_seed=0)
            for spec in self.specs:
                self.on_step(spec.name, 1, 2)
                moe = getattr(spec, "arch", "") == "mixtral"
                arch = "MixtralForCausalLM" if moe else "LlamaForCausalLM"
                manifest.put(
                    ZooEntry(
                        name=spec.name,
                        kind="trained",
                        architecture=arch,
                        source="test",
                        spec={},
                        fingerprint="f",
                        roles=list(spec.roles),
                        size_bytes=2**20,
                        files={},
                        build_s=0.1,
                    )
                )
                self.on_event(spec.name, "built")
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "manifest.json").write_text(manifest.model_dump_json())
            return manifest, [s.name for s in self.specs]

    monkeypatch.setattr(default, "ZooBuilder", FakeBuilder)
    events: list[str] = []
    cfg = default.resolve_config(None, "reduced", root, on_event=events.append)
    names = ["facts-mini", "numbers-moe-mini", "keywords-mini"]
    assert events == [f"built zoo models {', '.join(names)} in {root}"]
    assert sorted(e.name for e in cfg.pool.experts) == sorted(names)
    assert default.zoo_moe_model(root) == root / "numbers-moe-mini"
    again, manifest = default.existing_config(None, root)
    assert manifest is not None and sorted(manifest.entries) == sorted(names)
    assert again == cfg


@pytest.mark.parametrize(
    "command",
    [
        ["eval"],
        ["serve"],
        ["profile"],
        ["bench", "moe"],
        ["bench", "free-agents"],
        ["agents", "history"],
    ],
)
def test_help_paragraphs_wrap_at_80_columns_without_breaking_sentences(command):
    """Each paragraph of a command's description flows to the terminal's width: a line
    of it that stops short (under 60 of the 80 columns) ends a sentence or the paragraph
    (Typer once kept the docstring's own line breaks: "with each" / "strategy")."""
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    head = res.output.split("╭")[0].splitlines()[3:]  # the description, after Usage
    lines = [line.strip() for line in head]
    for line, nxt in zip(lines, [*lines[1:], ""], strict=True):
        if line and nxt and len(line) < 60:
            assert line.endswith((".", ":", ")")), (command, line)


def test_the_free_agent_pools_table_keeps_every_column_in_80(monkeypatch):
    """The widest pool name, a drop run and a control run: every header and figure is
    printed whole within 80 columns (a wider table was cut at the edge, its last columns
    and its caption lost)."""
    import io

    from rich.console import Console

    from orchestrator.cli import render
    from orchestrator.cli.bench import free_agents

    console = Console(width=80, file=io.StringIO(), record=True)
    monkeypatch.setattr(render, "out", console)
    monkeypatch.setattr(free_agents, "out", console)
    run = {
        "pool": "three-specialists",
        "seed": 12,
        "drop_at": 1000,
        "false_releases": 0,
        "detected_after": 1234,
        "promoted_after": 1250,
        "accuracy_before": 100.0,
        "accuracy_during": 66.7,
        "accuracy_after": 99.9,
        "free_agent_alone_after": 88.8,
        "victim_healthy_after": 77.7,
        "lost": 4321,
    }
    control = {**run, "drop_at": None, "lost": 5678}
    free_agents._print_pools({"runs": [run], "controls": [control], "pools": {}, "summary": {}})
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for word in ("three-specialists", "drop/12", "ctrl/12", "1234", "1250", "100.0", "66.7"):
        assert word in text, word
    for word in ("88.8", "77.7", "4321", "5678", "victim", "lost", "before its fault (ok)"):
        assert word in text, word
