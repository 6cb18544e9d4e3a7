"""The free-agent monitor live: a swap under concurrent gateway traffic with users'
feedback, and the scenario command through the facade."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import httpx
import uvicorn
import yaml
from typer.testing import CliRunner

from agents.free_agents import AuditLog
from evals.skillmix import generate
from orchestrator.answers import extract_choice
from orchestrator.cli import app
from orchestrator.conclave import Conclave
from orchestrator.config import parse_config
from orchestrator.gateway import GatewaySettings, create_app
from orchestrator.sdk import ConclaveClient
from orchestrator.types import ExpertAnswer


def _serve(conclave: Conclave, port: int) -> uvicorn.Server:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(conclave, GatewaySettings(batch_window_ms=2)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return server
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("gateway did not start")


def test_live_swap_under_concurrent_traffic_loses_and_duplicates_nothing(tmp_path):
    rows = generate("validation", 10, categories=("geography",)) + generate(
        "test", 30, categories=("geography",)
    )
    key = tmp_path / "key.jsonl"
    key.write_text("".join(json.dumps(r.model_dump()) + "\n" for r in rows))
    gold = {r.question: r.gold_answer for r in rows}

    def fake(accuracy: float) -> dict:
        return {
            "type": "fake",
            "answer": "The answer is ({letter}).",
            "answer_key": str(key),
            "accuracy": accuracy,
            "generate_s": 0.002,
        }

    cfg = parse_config(
        {
            "pool": {
                "experts": [
                    # the incumbent is broken from the start: 30% right
                    {
                        "name": "incumbent",
                        "backend": fake(1.0) | {"degrade_after": 10, "degraded_accuracy": 0.3},
                    },
                    {"name": "backup", "backend": fake(0.95)},
                    {
                        "name": "kw",
                        "roles": ["keywords"],
                        "backend": {"type": "fake", "answer": "Keywords: geography, capitals"},
                    },
                ]
            },
            "routing": {"embedder": "ngram", "aggregator": "vote"},
            "free_agents": {
                "free_agents": ["backup"],
                "window": 20,
                "min_samples": 20,
                "level_samples": 20,
                "detect_window": 20,
                "probation_min": 20,
                "audit_log": str(tmp_path / "audit.jsonl"),
            },
        }
    )
    conclave = Conclave(cfg)
    from evals.datasets import eval_items

    conclave.profile(
        [it for it in eval_items("skillmix", limit=10) if it.category == "geography"],
        dataset="skillmix",
    )
    port = 18000 + int(time.time()) % 1000
    server = _serve(conclave, port)
    url = f"http://127.0.0.1:{port}"
    questions = [r.question for r in rows[10:]]
    sent = 240

    def client(worker: int) -> list[dict]:
        got = []
        with ConclaveClient(url) as c:
            for i in range(worker, sent, 8):
                q = questions[i % len(questions)]
                reply = c.chat(q)
                got.append({"n": i, "id": reply.id, "experts": reply.trace["experts"]})
                right = extract_choice(reply.text, q) == gold[q]
                assert c.feedback(reply.id, right, answer=gold[q]) >= 1
        return got

    try:
        with cf.ThreadPoolExecutor(8) as ex:
            replies = [r for part in ex.map(client, range(8)) for r in part]
        with ConclaveClient(url) as c:
            agents = {a["agent"]: a for a in c.agents()["agents"]}
            history = c.agents()["history"]
            # the whole audit log, a page at a time, oldest first
            whole = list(c.audit(page=2))
            first = c.agents(history=2, offset=0)
            past_end = c.agents(history=5, offset=10_000)
    finally:
        server.should_exit = True
        time.sleep(0.5)
        conclave.close()

    # every request answered exactly once, none lost
    assert sorted(r["n"] for r in replies) == list(range(sent))
    assert len({r["id"] for r in replies}) == sent
    events = [(e["event"], e["agent"]) for e in history]
    assert ("release", "incumbent") in events and ("promotion", "backup") in events
    assert agents["backup"]["state"] == "serving" and agents["incumbent"]["state"] == "free agent"
    # requests after the swap were answered by the promoted agent only
    promoted_at = next(e["task"] for e in history if e["event"] == "promotion")
    assert promoted_at < sent
    last = sorted(replies, key=lambda r: r["n"])[-20:]
    assert all(r["experts"] == ["backup"] for r in last)
    assert whole == AuditLog(tmp_path / "audit.jsonl").read_dicts()
    assert first["history"] == whole[:2] and first["total"] == len(whole)
    assert first["next_offset"] == (2 if len(whole) > 2 else None)
    assert past_end["history"] == [] and past_end["next_offset"] is None
    # the audit log is what `conclave agents history` shows, the last ones or a page
    log = ["agents", "history", "--log", str(tmp_path / "audit.jsonl"), "--json"]
    res = CliRunner().invoke(app, log)
    assert res.exit_code == 0 and [e["event"] for e in json.loads(res.stdout)] == [
        e for e, _ in events
    ]
    page = CliRunner().invoke(app, [*log, "--offset", "1", "--last", "1"])
    assert json.loads(page.stdout) == whole[1:2]
    assert json.loads(CliRunner().invoke(app, [*log, "--all"]).stdout) == whole


def test_bench_free_agents_replays_the_scenario_through_the_facade():
    res = CliRunner().invoke(
        app,
        [
            *("bench", "free-agents", "--seeds", "1", "--first-seed", "3"),
            *("--requests", "400", "--drop-at", "150", "--json"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    (run,), (control,) = out["runs"], out["controls"]
    assert run["seed"] == control["seed"] == 3  # more seeds later, not seed 0 again
    assert run["lost"] == 0 and control["lost"] == 0
    assert run["detected_after"] is not None and 0 <= run["detected_after"] <= 100
    assert run["accuracy_during"] < run["accuracy_before_drop"]
    assert run["serving_at_end"] == ["backup"] and control["serving_at_end"] == ["facts"]
    assert control["releases"] == 0


def test_probes_score_serving_experts_on_validation_questions_never_shown(tmp_path):
    """With probes_per_task 0.5, every second task the serving expert also answers a
    validation question of its own skills (credit carries across batches): scored in its
    window, never returned; a challenger on probation answers the same probes."""
    from evals.bench.free_agents import _config, _items

    validation, test = _items("validation", 6), _items("test", 5)  # per category
    key = tmp_path / "key.jsonl"
    key.write_text("".join(json.dumps(it.model_dump()) + "\n" for it in validation + test))
    monitor = {"probes_per_task": 0.5, "window": 1000, "min_samples": 1000}
    cfg = _config(key, tmp_path, 0, {"facts": 1.0, "backup": 1.0}, monitor)
    validation_ids = {it.id for it in validation}
    with Conclave(cfg) as c:
        c.profile(validation, dataset="skillmix")
        # every profiled expert has a bank of its own: questions it answered right
        assert set(c.state.probes) == {"facts", "backup"}
        assert all(p.item.gold_answer for bank in c.state.probes.values() for p in bank)
        facts = c.pool.backends["facts"]
        before = len(facts.calls)
        traces = [c.answer([it], "symbolic-moe")[0] for it in test]
        assert [t.id for t in traces] == [it.id for it in test]  # probes never come back
        asked = [i for call in facts.calls[before:] for i in call]
        probes = [i.split("|")[0] for i in asked if i.startswith("probe")]
        assert len(asked) == 15 and len(probes) == 5 == c.probes_asked
        assert {p.split(":", 1)[1] for p in probes} <= validation_ids
        assert len(c.monitor.windows["facts"]) == 15  # 10 tasks + 5 probes, all scored
        # its own probe is expected at its strength there (validation accuracy in the
        # question's category: 1.0 for facts, always right)
        from orchestrator.traces import probe_trace

        own = c.state.probes["facts"][0]
        asked = own.item.model_copy(update={"id": f"probe99:{own.item.id}"})
        answer = ExpertAnswer(expert="facts", text="", choice=own.item.gold_answer)
        assert own.strength == 1.0
        assert c.expected(probe_trace(asked, own.keywords, answer)) == {"facts": 1.0}
        live = c.expected(traces[0])["facts"]
        assert live < 1.0  # a task: what its profile predicts on the question's skills
        # probation: the challenger shadows the probes as well as the tasks
        # a release on the next task: the absolute floor, and every mean reward is below 2
        from agents.swap_rules import SWAP_RULES

        c.monitor.settings = c.monitor.settings.model_copy(
            update={"min_samples": 1, "release_below": 2.0, "swap_rule": "window-mean"}
        )
        c.monitor.rule = SWAP_RULES.get("window-mean")
        c.answer([test[0]], "symbolic-moe")
        assert "facts" in c.monitor.probations
        backup = c.pool.backends["backup"]
        before = len(backup.calls)
        probation = c.monitor.probations["facts"]
        paired = len(probation.pairs)
        draw, seen = c.probes.draw, []

        def spy(*args: object, **kw: object) -> object:
            seen.append((args, kw))
            return draw(*args, **kw)

        c.probes.draw = spy  # type: ignore[method-assign]
        c.answer(test[:4], "symbolic-moe")
        # on probation it is probed on every request, asked or not, like a suspect
        (_, _, watch, requests), kw = seen[0]
        assert "facts" in watch and requests == 4 and kw["serving"] == ["facts"]
        shadowed = [i for call in backup.calls[before:] for i in call]
        # on probation, facts is asked its trial questions (right or wrong in validation)
        # and the challenger shadows them: a fair contest, scored as pairs
        trials = {p.item.id for p in c.state.trials["facts"]}
        asked = [i.split("|")[0] for i in shadowed if i.startswith("trial")]
        assert len(asked) == 2 and {i.split(":", 1)[1] for i in asked} <= trials
        assert not any(i.startswith("probe") for i in shadowed) and len(shadowed) == 6
        assert len(probation.pairs) - paired == 6 and set(asked) <= set(probation.pairs)


def test_bench_free_agents_pools_serves_scripted_experts_through_the_gateway(tmp_path):
    """The heterogeneous scenario on the real path: scripted remote experts behind an
    OpenAI-compatible server, the gateway, 8 clients with feedback, the monitor's
    defaults. The degraded specialist is released soon after the drop and the free agent
    promoted; no healthy agent is released, nothing is lost. The pool comes as a file, as
    a user brings one (`--pool-file`)."""
    from evals.bench.free_agents_pools import POOLS

    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(POOLS["three-specialists"].model_dump()))
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "free-agents",
            "--seeds",
            "1",
            "--requests",
            "400",
            "--drop-at",
            "200",
            "--pool-file",
            str(pool_file),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    pools = json.loads(res.stdout)["pools"]
    (run,), (control,) = pools["runs"], pools["controls"]
    assert run["lost"] == 0 and control["lost"] == 0
    assert run["false_releases"] == 0 and control["false_releases"] == 0, (run, control)
    assert run["releases"][0].startswith("stem@")
    assert run["detected_after"] is not None and run["detected_after"] <= 50
    assert run["promoted_after"] is not None and run["accuracy_after"] is not None
    below = run["free_agent_alone_after"] - run["accuracy_after"]
    assert json.loads(res.stdout)["pools"]["summary"]["after_below_free_agent_max"] == round(
        below, 1
    )
    bad = CliRunner().invoke(app, ["bench", "free-agents", "--pools", "--pool", "nope"])
    assert bad.exit_code != 0 and "unknown pool 'nope'" in bad.output
