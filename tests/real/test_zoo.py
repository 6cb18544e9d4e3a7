"""The reduced zoo: builds, is idempotent, detects corruption, and serves in vLLM."""

from __future__ import annotations

import json
import re

import pytest

from agents.zoo.build import ZooBuilder, load_manifest
from agents.zoo.evaluate import zoo_config
from evals.prompts import mc_messages
from evals.skillmix import generate

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    manifest, built = ZooBuilder(root, "reduced").build()
    assert built == ["facts-mini", "numbers-moe-mini"]
    return root


def test_manifest_records_provenance_and_hashes(zoo):
    data = json.loads((zoo / "manifest.json").read_text())
    facts = data["entries"]["facts-mini"]
    assert facts["kind"] == "trained" and facts["trained_on"] == ["geography", "chemistry"]
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
    from workers.batch import GenerationRequest
    from workers.pool import ExpertPool

    manifest = load_manifest(zoo, seed=0)
    config = zoo_config(zoo, manifest)
    questions = generate("test", 1, categories=("geography", "units"))
    reqs = [
        GenerationRequest(
            item_id=f"{q.id}|{e.name}", expert=e.name, messages=mc_messages(q.question)
        )
        for q in questions
        for e in config.pool.experts
    ]
    with ExpertPool(config) as pool:
        results = pool.run(reqs)
    assert pool.stats.loads == 2
    for q, r in zip([q for q in questions for _ in config.pool.experts], results, strict=True):
        assert r.ok, r.error
        if q.category in manifest.entries[r.expert].trained_on:
            # the specialists' format on their own skills (60 training steps: elsewhere
            # they babble): the option's text, which grading maps to its letter
            assert re.fullmatch(r"The answer is [^\n]+\.", r.text.strip()), r.text


def test_symbolic_moe_end_to_end_through_vllm(zoo, ray_cluster):
    """Profile and answer through real vLLM engines: keywords, experts and aggregator run
    as batched stages, each model loaded once for the whole run."""
    from orchestrator.conclave import Conclave, Item
    from orchestrator.config import parse_config

    data = zoo_config(zoo, load_manifest(zoo, seed=0)).model_dump()
    for e in data["pool"]["experts"]:  # the reduced zoo has no instruct model: one doubles
        if e["name"] == "facts-mini":
            e["roles"] = ["expert", "keywords", "aggregator"]
    # a tiny model's "keywords" are its answer sentence: keep them so routing has skills
    data["routing"] = {"keywords": {"samples": 2, "min_samples": 1, "max_chars": 60}}
    config = parse_config(data)
    cats = ("geography", "units")
    val = [Item(**q.model_dump()) for q in generate("validation", 3, categories=cats)]
    test = [Item(**q.model_dump()) for q in generate("test", 3, categories=cats)]
    with Conclave(config) as c:
        state = c.profile(val, dataset="skillmix")
        traces = c.answer(test, "symbolic-moe")
        loads = c.pool.stats.loads
        assert len(c.inventory) > 0
    assert set(state.accuracy) == {"facts-mini", "numbers-moe-mini"}
    assert state.aggregator in {"vote", "facts-mini"} and "vote" in state.aggregator_scores
    assert loads == 2  # both fit the budget: resident across keywords, experts, aggregator
    for t in traces:
        assert t.keywords and t.routing is not None and len(t.routing.chosen) == 3
        assert t.routing.rule in {"weighted", "shifted"}
        assert all(a.text and a.error is None for a in t.answers)
        assert t.calls == 2 + len(t.answers) + (state.aggregator != "vote")
        assert t.correct == (t.choice == t.gold)
