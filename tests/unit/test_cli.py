from __future__ import annotations

import json
import textwrap

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


def test_validate_names_the_bad_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(FAKE.replace("type: fake, answer", "type: fake, anser"))
    res = runner.invoke(app, ["config", "validate", str(path)])
    assert res.exit_code == 2
    assert "pool.experts.0.backend.fake.anser" in res.output and "unknown field" in res.output


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
