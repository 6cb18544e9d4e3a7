"""Keyword parsing and filtering, the skill inventory, and model profiles on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.config import KeywordSettings
from orchestrator.errors import ConfigError
from skills.inventory import NgramEmbedder, SkillInventory
from skills.keywords import (
    collect_keywords,
    combine_samples,
    keyword_requests,
    parse_sample,
)
from skills.profiles import ProfileSet
from workers.batch import GenerationResult


def test_parse_sample_normalises_like_the_paper():
    text = "Sure.\nKeywords: Geography, capital cities., Europe, a really long keyword here"
    assert parse_sample(text) == ["geography", "capital cities", "europe"]
    assert parse_sample("1. Algebra\n2. Number Theory") == ["algebra", "number theory"]
    assert parse_sample("") == []


def test_keywords_need_two_samples():
    s = KeywordSettings()
    samples = ["Keywords: geography, capitals", "Keywords: Geography, europe", None, "maps"]
    assert combine_samples(samples, s) == ["geography"]
    assert combine_samples(samples, s.model_copy(update={"min_samples": 1})) == [
        "geography",
        "capitals",
        "europe",
        "maps",
    ]


def test_keyword_requests_and_collection_round_trip():
    s = KeywordSettings(samples=3, seed=10)
    reqs = keyword_requests([("q1", "What is 2+2?"), ("q2", "Capital of Peru?")], "kw", s)
    assert len(reqs) == 6 and {r.expert for r in reqs} == {"kw"}
    assert [r.sampling.seed for r in reqs[:3]] == [10, 11, 12]
    assert "What is 2+2?" in reqs[0].messages[0].content
    results = [
        GenerationResult(item_id=r.item_id, expert="kw", text="Keywords: arithmetic, math")
        for r in reqs
    ]
    assert collect_keywords(results, s) == {
        "q1": ["arithmetic", "math"],
        "q2": ["arithmetic", "math"],
    }


def test_inventory_maps_to_nearest_and_round_trips(tmp_path):
    inv = SkillInventory.build(["linear algebra", "geography", "chemistry"], NgramEmbedder())
    assert inv.map(["geography", "algebra", "chemical symbols"]) == [
        "geography",
        "linear algebra",
        "chemistry",
    ]
    ((_, sim),) = inv.map_scored(["geography"])
    assert sim == 1.0
    inv.save(tmp_path / "inv")
    again = SkillInventory.load(tmp_path / "inv", NgramEmbedder())
    assert again.keywords == inv.keywords and np.allclose(again.vectors, inv.vectors)
    assert again.map(["algebra"]) == ["linear algebra"]


def test_inventory_cache_rejects_damage_and_other_embedders(tmp_path):
    inv = SkillInventory.build(["a b", "c d"], NgramEmbedder())
    inv.save(tmp_path)
    other = NgramEmbedder()
    other.name = "something-else"
    with pytest.raises(ConfigError, match="embedded with"):
        SkillInventory.load(tmp_path, other)
    raw = bytearray((tmp_path / "vectors.npy").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "vectors.npy").write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="damaged"):
        SkillInventory.load(tmp_path, NgramEmbedder())


def test_profiles_score_plus_minus_one_and_record_provenance():
    graded = [
        ("a", ["geography", "europe"], True),
        ("a", ["geography"], False),
        ("a", ["arithmetic"], True),
        ("b", ["geography", "geography"], True),  # a repeated keyword counts once
    ]
    ps = ProfileSet().update(graded, dataset="skillmix", split="validation")
    assert ps.profiles["a"].skills == {"geography": 0, "europe": 1, "arithmetic": 1}
    assert ps.profiles["a"].total == 2
    assert ps.profiles["b"].skills == {"geography": 1}
    prov = ps.profiles["a"].provenance[0]
    assert (prov.dataset, prov.split, prov.questions, prov.correct) == (
        "skillmix",
        "validation",
        3,
        2,
    )
    assert prov.accuracy == pytest.approx(66.67)


def test_profiles_merge_and_update():
    one = ProfileSet().update([("a", ["x"], True)], "d", "validation")
    two = ProfileSet().update([("a", ["x"], True), ("b", ["y"], False)], "d", "test")
    merged = one.merge(two)
    assert merged.profiles["a"].skills == {"x": 2} and merged.profiles["b"].skills == {"y": -1}
    assert len(merged.profiles["a"].provenance) == 2
    assert one.profiles["a"].skills == {"x": 1}  # merge does not change its inputs
    merged.update([("a", ["x"], False)], "d", "live")
    assert merged.profiles["a"].skills == {"x": 1}


def test_profiles_round_trip_and_reject_malformed_files(tmp_path):
    ps = ProfileSet().update([("a", ["x"], True)], "skillmix", "validation")
    path = ps.save(tmp_path / "profiles.json")
    assert ProfileSet.load(path) == ps
    bad = json.loads(path.read_text())
    bad["profiles"]["a"]["skills"]["x"] = "lots"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"malformed at profiles\.a\.skills\.x"):
        ProfileSet.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="malformed"):
        ProfileSet.load(path)
    bad["profiles"]["a"]["skills"]["x"] = 1
    bad["version"] = 99
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="format version 99"):
        ProfileSet.load(path)
    with pytest.raises(ConfigError, match="run `conclave profile` first"):
        ProfileSet.load(tmp_path / "missing.json")
    path.write_bytes(b"\x1f\x8b\x08\x00\xff")  # a gzipped copy, say
    with pytest.raises(ConfigError, match="is not text"):
        ProfileSet.load(path)
