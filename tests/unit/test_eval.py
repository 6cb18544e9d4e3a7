"""`conclave eval` and its harness on fake experts: outputs, resume, caching, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from evals import harness
from evals.datasets import load_dataset
from evals.harness import EvalSpec, run_eval
from evals.harness import run as harness_run
from orchestrator.cli import app
from orchestrator.conclave import Conclave
from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.files import read_jsonl

runner = CliRunner()

CONFIG = textwrap.dedent(
    """
    pool:
      experts:
        - {name: alpha, backend: {type: fake, answer: "The answer is (A)."}}
        - {name: beta, backend: {type: fake, answer: "The answer is (B)."}}
        - {name: mute, backend: {type: fake, answer: "I am not sure."}}
        - name: kw
          backend: {type: fake, answer: "Keywords: arithmetic, letters"}
          roles: [keywords]
        - name: agg
          backend: {type: fake, answer: "The answer is (C)."}
          roles: [aggregator]
    routing: {embedder: ngram}
    cache_dir: CACHE
    """
)
CATS = ["units", "dates"]


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "conclave.yaml"
    path.write_text(CONFIG.replace("CACHE", str(tmp_path / "cache")))
    return path


def _eval(config_path, out, *extra, as_json=True):
    return runner.invoke(
        app,
        [
            "eval",
            "-c",
            str(config_path),
            "--limit",
            "3",
            "--out",
            str(out),
            *(["--json"] if as_json else []),
            *(a for c in CATS for a in ("--category", c)),
            *extra,
        ],
        env={"COLUMNS": "80"},
    )


def test_eval_writes_a_complete_run_directory(config_path, tmp_path):
    out = tmp_path / "run"
    res = _eval(config_path, out)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    rows = read_jsonl(out / "results.jsonl")
    test = load_dataset("skillmix", "test", limit=3, categories=CATS)
    assert len(rows) == 6 * len(test)  # six strategies, every question once
    gold = {i.id: i.gold_answer for i in test}
    for name in ("alpha", "beta"):  # always the same letter: accuracy is its share of golds
        letter = "A" if name == "alpha" else "B"
        want = round(100 * sum(g == letter for g in gold.values()) / len(gold), 2)
        assert summary["strategies"][f"single:{name}"]["accuracy"] == want
    assert summary["strategies"]["single:mute"]["accuracy"] == 0.0
    s = summary["strategies"]
    assert s["majority"]["calls_per_question"] == 3  # every expert, vote without a call
    assert s["moa"]["calls_per_question"] == 4  # every expert plus the aggregator
    assert s["random-k"]["calls_per_question"] <= 3
    # greedy answers are computed once per run: MoA reuses majority's, every one of them
    assert s["moa"]["reused_per_question"] == 3 and s["majority"]["reused_per_question"] < 3
    sym = [r for r in rows if r["strategy"] == "symbolic-moe"]
    assert all(r["keywords"] == ["arithmetic", "letters"] for r in sym)
    for r in sym:  # 5 keyword samples, the drawn experts, the aggregator unless the vote
        assert r["calls"] == 5 + len(r["experts"]) + (r["aggregator"] != "vote")
    routed = [r for r in rows if r["strategy"] == "conclave"]
    for r in routed:  # 5 keyword samples, then 1-3 experts; never an aggregator call
        assert 1 <= len(r["experts"]) <= 3 and r["calls"] == 5 + len(r["experts"])
        assert r["aggregator"] == "vote"
    assert list(s)[0] == "conclave"  # listed first
    # the oracle is the best expert per category on the test split itself
    oracle = s["oracle (reference)"]
    for c in CATS:
        best = max(s[f"single:{e}"]["by_category"][c] for e in ("alpha", "beta", "mute"))
        assert oracle["by_category"][c] == best
    # summary.json on disk is the printed one; report and chart are written
    assert json.loads((out / "summary.json").read_text())["strategies"] == s
    report = (out / "report.md").read_text()
    assert "| symbolic-moe |" in report and "Accuracy per category" in report
    assert "| units | " not in report and "dates" in report
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in sym:  # each result line has what a person needs to audit a question
        assert {"keywords", "experts", "answers", "final", "gold", "correct"} <= set(r)
        assert r["correct"] == (r["final"] == gold[r["id"]])


def test_profile_is_cached_across_runs(config_path, tmp_path):
    first = _eval(config_path, tmp_path / "a")
    second = _eval(config_path, tmp_path / "b")
    assert json.loads(first.stdout)["profile"].startswith("built")
    assert json.loads(second.stdout)["profile"].startswith("reused")
    # a changed expert profiles again
    config_path.write_text(config_path.read_text().replace("(B)", "(D)"))
    third = _eval(config_path, tmp_path / "c")
    assert json.loads(third.stdout)["profile"].startswith("built")


def test_a_killed_eval_resumes_without_recomputing(config_path, tmp_path, monkeypatch):
    """Kill the run mid-strategy; the rerun computes only what is missing."""
    monkeypatch.setattr(harness_run, "CHUNK", 2)
    cfg = load_config(config_path)
    spec = EvalSpec(limit=3, categories=CATS, strategies=["majority", "symbolic-moe"])
    out = tmp_path / "run"
    answered: list[str] = []

    class Dies(Conclave):
        def answer(self, items, strategy="symbolic-moe", expert=None, progress=False):
            if strategy == "symbolic-moe" and len(answered) >= 8:
                raise KeyboardInterrupt  # killed in the second strategy's second chunk
            answered.extend(f"{strategy}:{i.id}" for i in items)
            return super().answer(items, strategy, expert, progress)

    with Dies(cfg) as c, pytest.raises(KeyboardInterrupt):
        run_eval(c, spec, out, tmp_path / "cache", progress=False)
    before = read_jsonl(out / "results.jsonl")
    assert len(before) == 8 and not (out / "summary.json").exists()
    with (out / "results.jsonl").open("ab") as f:  # a write cut short by the kill
        f.write(b'{"strategy": "symbolic-moe", "id": "units-te')
    answered.clear()

    class Counts(Conclave):
        def answer(self, items, strategy="symbolic-moe", expert=None, progress=False):
            answered.extend(f"{strategy}:{i.id}" for i in items)
            return super().answer(items, strategy, expert, progress)

    with Counts(cfg) as c:
        res = run_eval(c, spec, out, tmp_path / "cache", progress=False)
    rows = read_jsonl(out / "results.jsonl")
    assert rows[:8] == before  # finished work kept as it was
    assert len(answered) == 4 and all(a.startswith("symbolic-moe:") for a in answered)
    assert len(rows) == 12 and len({(r["strategy"], r["id"]) for r in rows}) == 12
    assert res["strategies"]["majority"]["questions"] == 6
    # its own time: the questions the killed run answered are counted apart, not timed
    assert res["strategies"]["majority"]["resumed"] == 6
    assert res["strategies"]["majority"]["seconds"] == 0
    assert res["strategies"]["symbolic-moe"]["resumed"] == 2


def test_a_run_directory_refuses_other_settings(config_path, tmp_path):
    out = tmp_path / "run"
    assert _eval(config_path, out, "-s", "majority").exit_code == 0
    res = _eval(config_path, out, "-s", "majority", "--seed", "3")
    assert res.exit_code == 2 and "other settings" in res.output


def test_a_directory_of_other_files_is_refused_and_left_as_it_was(config_path, tmp_path):
    """`--out .` in a project: the run would write report.md and the rest over files of
    the same name. An empty folder is fine (a run's first file is run.json)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "report.md").write_text("my notes")
    res = _eval(config_path, project, "-s", "majority")
    assert res.exit_code == 2 and "holds other files and no run" in " ".join(res.output.split())
    assert sorted(p.name for p in project.iterdir()) == ["report.md"]
    assert (project / "report.md").read_text() == "my notes"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _eval(config_path, empty, "-s", "majority").exit_code == 0


def test_a_run_directory_it_cannot_create_is_a_clear_error(config_path, tmp_path):
    """--out under a file (or anywhere it cannot write) is exit 2 naming the directory,
    before any question is asked (was an OSError's traceback)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = _eval(config_path, blocker / "run", "-s", "majority")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"run directory {blocker / 'run'}: cannot write there" in " ".join(res.output.split())


def test_bad_input_is_a_clear_error(config_path, tmp_path):
    res = _eval(config_path, tmp_path / "r", "-s", "telepathy")
    assert res.exit_code == 2 and "unknown strategies ['telepathy']" in res.output
    res = runner.invoke(
        app, ["eval", "-c", str(config_path), "--data", str(tmp_path / "none.jsonl")]
    )
    assert res.exit_code == 2 and "does not exist" in res.output


def test_a_test_file_needs_a_separate_validation_file(config_path, tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text(
        json.dumps({"question": "1+1? The options are: (A) 2 (B) 3", "gold_answer": "A"}) + "\n"
    )
    res = runner.invoke(app, ["eval", "-c", str(config_path), "--data", str(data)])
    assert res.exit_code == 2 and "--profile-data" in res.output
    copy = tmp_path / "v.jsonl"
    copy.write_text(data.read_text())
    res = runner.invoke(
        app,
        ["eval", "-c", str(config_path), "--data", str(data), "--profile-data", str(copy)],
    )
    assert res.exit_code == 2 and "also in the validation set" in res.output


def test_profile_route_and_experts_commands(config_path):
    res = runner.invoke(app, ["profile", "-c", str(config_path), "--limit", "2", "--json"])
    assert res.exit_code == 0, res.output
    prof = json.loads(res.stdout)
    assert set(prof["accuracy"]) == {"alpha", "beta", "mute"}
    assert prof["aggregator"] in {"vote", "agg"}
    res = runner.invoke(
        app,
        [
            "route",
            "-c",
            str(config_path),
            "--limit",
            "2",
            "--json",
            "--explain",
            "What is 3 + 4? The options are: (A) 7 (B) 8",
        ],
    )
    assert res.exit_code == 0, res.output
    (plan,) = json.loads(res.stdout)
    assert plan["strategy"] == "conclave" and plan["keywords"] == ["arithmetic", "letters"]
    assert set(plan["explanation"]["estimates"]) == {"alpha", "beta", "mute"}
    assert 1 <= len(plan["experts"]) <= 2
    args = ["route", "-c", str(config_path), "--limit", "2", "-q", "2+2?"]
    res = runner.invoke(app, args)
    assert "keywords: arithmetic, letters" in res.output and "estimated accuracy" in res.output
    # the paper's router: each expert's S, g and weight, three draws
    res = runner.invoke(app, [*args, "-s", "symbolic-moe", "--json"])
    (plan,) = json.loads(res.stdout)
    assert {s["expert"] for s in plan["routing"]["scores"]} == {"alpha", "beta", "mute"}
    assert len(plan["routing"]["chosen"]) == len(plan["experts"]) == 3
    res = runner.invoke(app, [*args, "-s", "symbolic-moe"])
    assert "g (global)" in res.output
    res = runner.invoke(app, ["experts", "list", "-c", str(config_path), "--json"])
    names = [e["name"] for e in json.loads(res.stdout)["experts"]]
    assert names == ["alpha", "beta", "mute", "kw", "agg"]


def test_eval_needs_profiles_only_for_strategies_that_use_them(config_path, tmp_path):
    res = _eval(config_path, tmp_path / "r", "-s", "majority", "-s", "random-k")
    assert json.loads(res.stdout)["profile"] == "not needed"


def test_help_of_every_command_is_light():
    code = (
        "import sys; from typer.testing import CliRunner; from orchestrator.cli import app;"
        "cmds = [['eval'], ['profile'], ['route'], ['experts', 'list'], ['zoo', 'build'],"
        " ['bench', 'pool'], ['bench', 'route']];"
        "codes = [CliRunner().invoke(app, [*c, '--help']).exit_code for c in cmds];"
        "assert codes == [0] * len(cmds), codes;"
        "heavy = ('torch', 'vllm', 'ray', 'litellm', 'transformers', 'matplotlib');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_check_strategies():
    with pytest.raises(ConfigError, match="choose from best-single"):
        harness.check_strategies(["single"])


def test_eval_profile_and_route_share_one_cached_profile(config_path, tmp_path):
    """Same validation items by default, so each command reuses the first's profile."""
    first = runner.invoke(app, ["profile", "-c", str(config_path), "--json"])
    assert json.loads(first.stdout)["reused"] is False
    ev = runner.invoke(
        app,
        [
            "eval",
            "-c",
            str(config_path),
            "-s",
            "symbolic-moe",
            "--limit",
            "10",
            "--out",
            str(tmp_path / "r"),
            "--json",
        ],
    )
    assert json.loads(ev.stdout)["profile"].startswith("reused")
    route = runner.invoke(app, ["route", "-c", str(config_path), "-q", "What is 2+2?"])
    assert route.exit_code == 0 and "profile reused" in route.output
    # the table shows each expert's prior strength, as leave-one-out chose it
    state = json.loads(first.stdout)
    table = runner.invoke(app, ["profile", "-c", str(config_path)], terminal_width=160)
    assert table.exit_code == 0 and "prior strength" in table.output
    for name in state["accuracy"]:
        row = next(line for line in table.output.splitlines() if f" {name} " in line)
        cells = [c.strip() for c in row.split("│")]
        assert f"{state['priors'].get(name, state['prior_strength']):g}" in cells


def test_failed_calls_are_counted_shown_and_fail_the_eval(config_path, tmp_path):
    """An expert whose model cannot load: its failed calls are counted per strategy and
    per expert in summary.json, the table and report.md, and the eval exits 1 naming
    who lost how much, unless --allow-errors."""
    broken = "    - {name: broken, backend: {type: fake, fail_load: true}}\n"
    text = config_path.read_text().replace("\nrouting:", "\n" + broken + "routing:", 1)
    assert "broken" in text
    config_path.write_text(text)
    res = _eval(config_path, tmp_path / "run", "-s", "majority", "-s", "best-single")
    assert res.exit_code == 1, res.output
    assert "majority lost 25%" in res.output and "single:broken lost 100%" in res.output
    assert "--allow-errors" in res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["strategies"]
    assert summary["majority"]["errors"] == 6 and summary["majority"]["error_share"] == 0.25
    assert summary["majority"]["errors_by_expert"] == {"broken": 6}
    assert summary["single:broken"]["errors"] == 6 and summary["best-single"]["errors"] == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| 6 (25%) |" in report and "- majority: broken 6" in report
    again = _eval(
        config_path, tmp_path / "run", "-s", "majority", "-s", "best-single", "--allow-errors"
    )
    assert again.exit_code == 0, again.output
    table = _eval(
        config_path,
        tmp_path / "run",
        *("-s", "majority", "-s", "best-single", "--allow-errors"),
        as_json=False,
    )
    assert " errors" in table.output and "…" not in table.output  # whole headers at 80
    assert "failed expert calls" in table.output
    assert "broken 6" in table.output


def test_a_resumed_run_asks_again_the_questions_that_lost_a_call(config_path, tmp_path):
    """Rows with a failed call are not done: the next run with the same directory asks
    them again; the new rows replace them in the summary."""
    cfg = load_config(config_path)
    spec = EvalSpec(limit=3, categories=CATS, strategies=["majority"])
    out = tmp_path / "run"

    class Flaky(Conclave):
        def answer(self, items, strategy="symbolic-moe", expert=None, progress=False):
            traces = super().answer(items, strategy, expert, progress)
            traces[0].answers[0].error = "connection reset (injected)"
            return traces

    with Flaky(cfg) as c:
        first = run_eval(c, spec, out, tmp_path / "cache", progress=False)
    assert first["strategies"]["majority"]["errors"] >= 1
    asked: list[str] = []

    class Counts(Conclave):
        def answer(self, items, strategy="symbolic-moe", expert=None, progress=False):
            asked.extend(i.id for i in items)
            return super().answer(items, strategy, expert, progress)

    with Counts(cfg) as c:
        second = run_eval(c, spec, out, tmp_path / "cache", progress=False)
    failed = {
        r["id"] for r in read_jsonl(out / "results.jsonl") if any(a["error"] for a in r["answers"])
    }
    assert set(asked) == failed and asked  # only those
    assert second["strategies"]["majority"]["errors"] == 0
    assert second["strategies"]["majority"]["questions"] == 6


def test_sigterm_stops_an_eval_like_ctrl_c_and_it_resumes(config_path, tmp_path):
    """SIGTERM mid-run (an expert generating): the eval says it was interrupted and how
    to resume, exits 130 with every finished chunk kept, and the same command finishes
    the rest."""
    import signal
    import time

    slow = config_path.read_text().replace("{type: fake,", "{type: fake, generate_s: 1,")
    config_path.write_text(slow)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "orchestrator.cli", "eval", "-c", str(config_path)]
    cmd += ["--limit", "3", "--out", str(out), "-s", "majority", "-s", "symbolic-moe"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "results.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert time.monotonic() - t0 < 10
    assert f"interrupted; resume with the same command and --out {out}" in " ".join(output.split())
    kept = read_jsonl(out / "results.jsonl")
    assert 0 < len(kept) < 2 * 24  # some chunks, not all
    done = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_jsonl(out / "results.jsonl")
    assert rows[: len(kept)] == kept and len({(r["strategy"], r["id"]) for r in rows}) == len(rows)


def test_a_label_placed_far_from_its_point_gets_a_leader_line_and_the_chart_renders():
    """Ten strategies at one point: the near spots run out, so labels go further out with
    a thin line to their point (this once raised at the end of a `bench routing` run,
    after every answer: matplotlib takes an annotation's arrow only when it is made)."""
    from evals.harness.report import _OFFSETS, _box, chart_png, draw_chart

    summary = {f"strategy-{i}": {"accuracy": 80.0, "calls_per_question": 2.0} for i in range(10)}
    fig, labels = draw_chart(summary, "crowded", [])
    renderer = fig.canvas.get_renderer()
    far = [t for t in labels if t.arrow_patch is not None]
    near = [t for t in labels if t.arrow_patch is None]
    assert len(near) <= len(_OFFSETS) and len(far) == len(labels) - len(near) >= 4
    boxes = [_box(t, renderer) for t in labels]  # the text, not its line
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert chart_png(summary, "crowded").startswith(b"\x89PNG")


def test_a_chart_that_cannot_be_drawn_leaves_the_figures_and_says_why(
    tmp_path, monkeypatch, caplog
):
    """The chart is drawn last and is the one output a run can do without: when
    matplotlib raises, summary.json and report.md are written, no chart.png, and the
    log says why (a `bench routing` of many runs once stopped at the first)."""
    from evals.harness import report

    def broken(*_a, **_kw):
        raise AttributeError("Annotation.set() got an unexpected keyword argument")

    monkeypatch.setattr(report, "chart_png", broken)
    from evals.harness.summary import StrategySummary

    figures = StrategySummary(
        accuracy=80.0,
        questions=3,
        calls_per_question=2.0,
        expert_calls_per_question=2.0,
        tokens_per_question=40.0,
        seconds=1.5,
        model_loads=2,
        by_category={"geography": 80.0},
    )
    summary = {"majority": figures.model_dump()}
    spec = EvalSpec(limit=3, categories=CATS, strategies=["majority"])
    with caplog.at_level("WARNING", logger="evals.harness.report"):
        report.write_outputs(tmp_path, summary, spec, {"questions": 3})
    assert json.loads((tmp_path / "summary.json").read_text())["strategies"] == summary
    assert "majority" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "chart.png").exists()
    assert "chart.png not drawn" in caplog.text and "unexpected keyword" in caplog.text


def test_a_chart_with_eight_single_experts_has_no_overlapping_labels():
    """Strategies that share a point and eight single experts at 1 call: every label is
    placed apart (before, "best-single" and five `single:*` labels printed over each
    other); the oracle is a reference line, not a point."""
    from evals.harness.report import ORACLE, draw_chart

    summary = {
        "conclave": {"accuracy": 95.0, "calls_per_question": 1.14},
        "symbolic-moe": {"accuracy": 95.0, "calls_per_question": 1.14},
        "best-single": {"accuracy": 37.5, "calls_per_question": 1.0, "derived": "best"},
        "majority": {"accuracy": 56.2, "calls_per_question": 8.0},
        **{
            f"single:expert-{i}": {"accuracy": a, "calls_per_question": 1.0}
            for i, a in enumerate((37.5, 37.5, 36.2, 25.0, 23.8, 21.2, 18.8, 3.8))
        },
        ORACLE: {"accuracy": 96.2, "calls_per_question": 1.0},
    }
    fig, labels = draw_chart(summary, "eight singles", ["conclave"])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert len(labels) == len(summary) - 1  # every row but the oracle has a label
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (
                labels[boxes.index(a)].get_text(),
                labels[boxes.index(b)].get_text(),
            )
    ax = fig.axes[0]
    assert [round(line.get_ydata()[0], 1) for line in ax.get_lines()] == [96.2]
