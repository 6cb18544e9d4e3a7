"""The reduced zoo: builds, is idempotent, detects corruption, and serves in vLLM."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from agents.zoo.build import ZooBuilder, load_manifest
from agents.zoo.evaluate import zoo_config
from agents.zoo.train import SKILL_KEYWORDS
from evals.skillmix import generate
from orchestrator.prompts import mc_messages

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    manifest, built = ZooBuilder(root, "reduced").build()
    assert built == ["facts-mini", "numbers-moe-mini", "keywords-mini"]
    return root


def test_manifest_records_provenance_and_hashes(zoo):
    data = json.loads((zoo / "manifest.json").read_text())
    facts = data["entries"]["facts-mini"]
    assert facts["kind"] == "trained" and facts["trained_on"] == ["geography"]
    assert facts["architecture"] == "LlamaForCausalLM" and facts["seed"] == 0
    assert data["entries"]["numbers-moe-mini"]["architecture"] == "MixtralForCausalLM"
    assert "model.safetensors" in facts["files"] and facts["size_bytes"] > 0


def test_second_build_does_nothing(zoo):
    _, built = ZooBuilder(zoo, "reduced").build()
    assert built == []


def test_corrupt_or_partial_models_are_rebuilt(zoo):
    weights = zoo / "facts-mini" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    (zoo / ".numbers-moe-mini.leftover").mkdir()  # an interrupted build's folder
    _, built = ZooBuilder(zoo, "reduced").build()
    assert built == ["facts-mini"]
    assert not (zoo / ".numbers-moe-mini.leftover").exists()
    good = (zoo / "manifest.json").read_text()
    (zoo / "manifest.json").write_text("{ not json")
    assert load_manifest(zoo, seed=0).entries == {}  # unreadable: treated as empty, rebuilt
    (zoo / "manifest.json").write_text(good)


def test_a_concurrent_build_is_refused(zoo):
    import fcntl

    from orchestrator.errors import ConfigError

    with open(zoo / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another zoo build is running"):
            ZooBuilder(zoo, "reduced").build()


def test_every_model_loads_in_vllm_and_answers_in_format(zoo, ray_cluster):
    from orchestrator.config import KeywordSettings
    from workers.batch import GenerationRequest
    from workers.pool import ExpertPool

    manifest = load_manifest(zoo, seed=0)
    config = zoo_config(zoo, manifest)
    questions = generate("test", 1, categories=("geography", "units"))
    prompt = KeywordSettings().prompt

    def messages(name: str, question: str) -> list[dict[str, str]]:
        if "keywords" in manifest.entries[name].roles:
            return [{"role": "user", "content": prompt.format(question=question)}]
        return mc_messages(question)

    reqs = [
        GenerationRequest(
            item_id=f"{q.id}|{e.name}", expert=e.name, messages=messages(e.name, q.question)
        )
        for q in questions
        for e in config.pool.experts
    ]
    with ExpertPool(config) as pool:
        results = pool.run(reqs)
    assert pool.stats.loads == 3
    for q, r in zip([q for q in questions for _ in config.pool.experts], results, strict=True):
        assert r.ok, r.error
        entry = manifest.entries[r.expert]
        if "keywords" in entry.roles:  # names the question's skills
            words = r.text.strip().removeprefix("Keywords: ").split(", ")
            assert set(words) <= set(SKILL_KEYWORDS[q.category]), r.text
        elif q.category in entry.trained_on:
            # the specialists' format on their own skills (60 training steps: elsewhere
            # they babble): the option's text, which grading maps to its letter
            assert re.fullmatch(r"The answer is [^\n]+\.", r.text.strip()), r.text


def test_symbolic_moe_end_to_end_through_vllm(zoo, ray_cluster):
    """Profile and answer through real vLLM engines: keywords (the zoo's trained keyword
    model), experts and aggregator run as batched stages, each model loaded once."""
    from orchestrator.conclave import Conclave
    from orchestrator.types import Item

    config = zoo_config(zoo, load_manifest(zoo, seed=0))
    cats = ("geography", "units")
    val = [Item(**q.model_dump()) for q in generate("validation", 3, categories=cats)]
    test = [Item(**q.model_dump()) for q in generate("test", 3, categories=cats)]
    with Conclave(config) as c:
        state = c.profile(val, dataset="skillmix")
        traces = c.answer(test, "symbolic-moe")
        loads = c.pool.stats.loads
        assert len(c.inventory) > 0
    assert set(state.accuracy) == {"facts-mini", "numbers-moe-mini"}
    assert state.aggregator == "vote"  # the reduced zoo has no LLM aggregator
    assert loads == 3  # all fit the budget: resident across keywords, experts, aggregator
    skill_words = {w for ws in SKILL_KEYWORDS.values() for w in ws}
    for t in traces:
        assert t.keywords and set(t.keywords) <= skill_words, t.keywords
        assert t.routing is not None and len(t.routing.chosen) == 3
        assert t.routing.rule in {"weighted", "shifted"}
        assert all(a.text and a.error is None for a in t.answers)
        assert t.calls == 5 + len(t.answers)  # keyword samples, then the drawn experts
        assert t.correct == (t.choice == t.gold)


def test_conclave_eval_on_the_reduced_zoo(zoo, ray_cluster, tmp_path, monkeypatch):
    """The README's main job on the reduced zoo: `conclave eval` end to end through vLLM,
    then a rerun on the same run directory that finds everything done."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    monkeypatch.setenv("CONCLAVE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = [
        "eval",
        "--zoo",
        "reduced",
        "--dir",
        str(zoo),
        "--limit",
        "2",
        "--out",
        str(out),
        "--category",
        "geography",
        "--category",
        "units",
        "--json",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    s = summary["strategies"]
    assert {"conclave", "best-single", "random-k", "majority", "moa", "symbolic-moe"} <= set(s)
    assert {"single:facts-mini", "single:numbers-moe-mini", "oracle (reference)"} <= set(s)
    assert all(v["questions"] == 4 for k, v in s.items() if not k.startswith("oracle"))
    assert s["majority"]["calls_per_question"] == 2
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 4  # six strategies, four questions
    for r in rows:
        assert r["answers"] and all(a["text"] for a in r["answers"])
    for name in ("summary.json", "report.md", "chart.png"):
        assert (out / name).stat().st_size > 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["profile"].startswith("reused")
    rerun = json.loads(again.stdout)["strategies"]
    # nothing recomputed, the same figures; its time is its own: every question resumed
    mine = ("seconds", "resumed")
    for name, row in rerun.items():
        assert {k: v for k, v in row.items() if k not in mine} == {
            k: v for k, v in s[name].items() if k not in mine
        }
        if not row["derived"]:
            assert row["seconds"] == 0 and row["resumed"] == 4 and s[name]["resumed"] == 0


def test_gateway_serves_the_reduced_zoo_to_the_openai_client(zoo, ray_cluster):
    """The real path behind the gateway: vLLM engines in Ray, the official openai client."""
    import socket
    import threading
    import time

    import httpx
    import openai
    import uvicorn

    from orchestrator.conclave import Conclave
    from orchestrator.gateway import create_app
    from orchestrator.types import Item

    config = zoo_config(zoo, load_manifest(zoo, seed=0))
    conclave = Conclave(config)
    val = [Item(**q.model_dump()) for q in generate("validation", 2, categories=("geography",))]
    conclave.profile(val, dataset="skillmix")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(create_app(conclave), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        (q,) = generate("test", 1, categories=("geography",))
        msg = [{"role": "user", "content": mc_messages(q.question)[0]["content"]}]
        one = client.chat.completions.create(model="facts-mini", messages=msg)
        assert re.fullmatch(r"The answer is [^\n]+\.", one.choices[0].message.content.strip())
        assert one.usage.prompt_tokens > 0 and one.usage.completion_tokens > 0
        routed = client.chat.completions.create(model="conclave", messages=msg)
        trace = routed.model_extra["conclave"]
        assert trace["keywords"] and set(trace["experts"]) <= {"facts-mini", "numbers-moe-mini"}
        chunks = list(client.chat.completions.create(model="facts-mini", messages=msg, stream=True))
        pieces = [
            c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
        ]
        # token by token from the engine, rendered as vLLM's chat() renders: greedy, the
        # same answer
        assert len(pieces) > 2 and "".join(pieces) == one.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == one.usage.completion_tokens
        # the routed ensemble streams: token by token from the engine when it asks one
        # expert alone, else its voted answer once the vote is done; the same text as
        # unstreamed (greedy, one request either way)
        voted = list(client.chat.completions.create(model="conclave", messages=msg, stream=True))
        said = [
            c.choices[0].delta.content for c in voted if c.choices and c.choices[0].delta.content
        ]
        assert "".join(said) == routed.choices[0].message.content
        chosen = voted[-1].model_extra["conclave"]["experts"]
        assert chosen == trace["experts"] and set(chosen) <= {"facts-mini", "numbers-moe-mini"}
        assert len(said) > 2 if len(chosen) == 1 else len(said) >= 1
        # a prompt past the model's context: 400 with vLLM's reason, streamed or not, from
        # an expert and from the ensemble (every expert it chose refused it)
        huge = [{"role": "user", "content": "word " * 5000}]
        for model, stream in itertools.product(("facts-mini", "conclave"), (False, True)):
            with pytest.raises(openai.BadRequestError, match="context length"):
                client.chat.completions.create(model=model, messages=huge, stream=stream)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        conclave.close()
