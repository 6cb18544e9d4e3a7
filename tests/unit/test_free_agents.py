"""The free-agent monitor: rewards, release, probation, promotion, rejection, audit log."""

from __future__ import annotations

import json
import random

import pytest

from agents.free_agents import AuditLog, FreeAgentMonitor, TaskOutcome, reward
from orchestrator.config import FreeAgentSettings, RewardWeights, parse_config
from orchestrator.errors import ConfigError
from orchestrator.types import ExpertAnswer, Trace

W = RewardWeights(accuracy=1.0, synergy=0.25, efficiency=0.05, penalty=1.0, token_budget=100)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (TaskOutcome(agent="a", task="t", correct=True, agreed=True, tokens=0), 1.0),
        (TaskOutcome(agent="a", task="t", correct=False, agreed=True, tokens=0), 0.3 / 1.3),
        (TaskOutcome(agent="a", task="t", correct=False, agreed=False, tokens=100), 0.0),
        (TaskOutcome(agent="a", task="t", correct=True, agreed=False, tokens=50), 1.025 / 1.3),
        # no gold: synergy and efficiency only
        (TaskOutcome(agent="a", task="t", agreed=True, tokens=0), 1.0),
        (TaskOutcome(agent="a", task="t", agreed=False, tokens=200), 0.0),
        # failures are penalised on top
        (TaskOutcome(agent="a", task="t", correct=False, failed=True, tokens=100), -1.0),
        (TaskOutcome(agent="a", task="t", agreed=True, unparsable=True, tokens=0), 0.0),
    ],
)
def test_reward_on_hand_made_cases(outcome, expected):
    assert reward(outcome, W) == pytest.approx(expected)


def _trace(i: int, right: dict[str, bool], shadow_right: bool | None = None) -> tuple:
    """One task answered by the agents in `right` (True: the gold 'A'); the final answer is
    the first agent's. With `shadow_right`, the challenger 'free' answered too."""
    answers = [ExpertAnswer(expert=a, choice="A" if ok else "B") for a, ok in right.items()]
    tr = Trace(
        id=f"q{i}",
        strategy="symbolic-moe",
        answers=answers,
        gold="A",
        choice=answers[0].choice,
        keywords=["geography"],
    )
    shadow = []
    if shadow_right is not None:
        shadow = [("inc", ExpertAnswer(expert="free", choice="A" if shadow_right else "B"))]
    return tr, shadow


def _monitor(tmp_path, **kw) -> FreeAgentMonitor:
    settings = FreeAgentSettings(free_agents=["free"], **kw)
    return FreeAgentMonitor(settings, ["inc", "other", "free"], AuditLog(tmp_path / "a.jsonl"))


def _run(mon, n, acc_inc, acc_free, seed, start=0) -> int:
    """Feed `n` tasks; returns the task index of the first promotion, else -1."""
    rng = random.Random(seed)
    for i in range(start, start + n):
        serving, shadows = mon.plan()
        lead = "inc" if "inc" in serving else "free"
        acc = acc_inc if lead == "inc" else acc_free
        tr, shadow = _trace(
            i,
            {lead: rng.random() < acc, "other": rng.random() < 0.97},
            (rng.random() < acc_free) if "inc" in shadows else None,
        )
        decisions = mon.observe([tr], {tr.id: shadow} if shadow else {})
        if any(d.event == "promotion" for d in decisions):
            return i
    return -1


@pytest.mark.parametrize("seed", range(20))
def test_a_healthy_agent_is_never_released_on_noise(tmp_path, seed):
    mon = _monitor(tmp_path)
    _run(mon, 500, acc_inc=0.95, acc_free=0.9, seed=seed)
    assert mon.log.read() == [] and mon.plan() == (["inc", "other"], {})


def test_release_probation_and_promotion(tmp_path):
    mon = _monitor(tmp_path)
    assert _run(mon, 100, acc_inc=0.95, acc_free=0.92, seed=1) == -1  # healthy
    promoted = _run(mon, 300, acc_inc=0.75, acc_free=0.92, seed=1, start=100)
    events = [(e.event, e.agent, e.incumbent) for e in mon.log.read()]
    assert events == [
        ("release", "inc", None),
        ("probation_start", "free", "inc"),
        ("promotion", "free", "inc"),
    ]
    release, start, promotion = mon.log.read()
    assert release.task - 100 <= 50  # detected within 50 tasks of the drop
    assert promotion.task - start.task >= mon.settings.probation_min
    f = promotion.figures  # the rule: beats the incumbent, or clears the threshold
    assert f["diff_lower"] > 0 or f["challenger_lower"] >= mon.settings.release_below
    assert promoted == promotion.task - 1
    serving, shadows = mon.plan()
    assert serving == ["free", "other"] and shadows == {}  # it took the incumbent's place
    assert mon.free == ["inc"]  # the incumbent waits in the pool: it may come back
    assert mon.promoted_profiles["free"]  # what its probation showed, for the router


def test_a_weaker_challenger_is_rejected_and_the_incumbent_gets_a_fresh_window(tmp_path):
    mon = _monitor(tmp_path, probation_max=120)
    _run(mon, 400, acc_inc=0.75, acc_free=0.4, seed=3)
    events = [e.event for e in mon.log.read()]
    assert events[:3] == ["release", "probation_start", "rejection"]
    assert "promotion" not in events
    rejection = mon.log.read()[2]
    assert rejection.figures["diff_upper"] < 0 and "trails" in rejection.reason
    assert "inc" in mon.plan()[0]


def test_no_free_agent_left_keeps_the_incumbent_serving(tmp_path):
    settings = FreeAgentSettings(enabled=True)
    mon = FreeAgentMonitor(settings, ["inc", "other"], AuditLog(tmp_path / "a.jsonl"))
    _run(mon, 60, acc_inc=0.5, acc_free=0.0, seed=0)
    assert [e.event for e in mon.log.read()][:2] == ["release", "no_replacement"]
    assert mon.plan()[0] == ["inc", "other"]


def test_feedback_scores_the_agents_that_agreed(tmp_path):
    mon = _monitor(tmp_path)
    answers = [ExpertAnswer(expert="inc", choice="A"), ExpertAnswer(expert="other", choice="B")]
    tr = Trace(id="t1", strategy="symbolic-moe", answers=answers, choice="A")  # no gold
    mon.observe([tr])
    assert len(mon.windows["inc"]) == 1
    assert mon.feedback("t1", correct=False) == 1  # only 'inc' agreed: it was wrong
    assert mon.windows["inc"][-1] == pytest.approx(
        reward(
            TaskOutcome(agent="inc", task="t1", correct=False, agreed=True), mon.settings.weights
        )
    )
    assert mon.feedback("t1", correct=True) == 2
    with pytest.raises(KeyError):
        mon.feedback("nope", correct=True)


def test_the_audit_log_survives_a_crash_mid_write(tmp_path):
    mon = _monitor(tmp_path)
    _run(mon, 100, acc_inc=0.5, acc_free=0.9, seed=0)
    path = mon.log.path
    whole = mon.log.read()
    assert whole
    with path.open("ab") as f:  # a crash during the next write: half a line
        f.write(b'{"time": 1.0, "task": 7, "event": "prom')
    assert mon.log.read() == whole  # the partial line is dropped
    _run(mon, 200, acc_inc=0.5, acc_free=0.9, seed=1, start=100)
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line whole again
    assert len(mon.log.read()) > len(whole)


def test_config_names_free_agents_among_the_experts():
    experts = [
        {"name": "a", "backend": {"type": "fake"}},
        {"name": "b", "backend": {"type": "fake"}},
    ]
    with pytest.raises(ConfigError, match="'zed' is not an expert"):
        parse_config({"pool": {"experts": experts}, "free_agents": {"free_agents": ["zed"]}})
    with pytest.raises(ConfigError, match="none would serve"):
        parse_config({"pool": {"experts": experts}, "free_agents": {"free_agents": ["a", "b"]}})
