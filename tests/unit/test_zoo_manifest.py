from __future__ import annotations

import json

from agents.zoo.build import PROFILES, ZooEntry, ZooManifest, load_manifest
from agents.zoo.evaluate import zoo_config


def _entry(name: str) -> ZooEntry:
    return ZooEntry(
        name=name,
        kind="trained",
        architecture="LlamaForCausalLM",
        source="conclave training",
        spec={},
        fingerprint="f",
        roles=["expert"],
        size_bytes=1,
        files={},
        build_s=0.0,
    )


FULL = [s.name for s in PROFILES["full"]]


def test_entries_keep_the_profile_order_whatever_order_they_were_built_in():
    m = ZooManifest(updated="now", skillmix_seed=0)
    for name in reversed(FULL):  # models finish building in any order
        m.put(_entry(name))
    m.put(_entry("my-extra"), _entry("facts"))  # an outside model goes last; facts stays
    assert list(m.entries) == [*FULL, "my-extra"]


def test_a_manifest_written_in_another_order_loads_in_the_profile_order(tmp_path):
    shuffled = FULL[::2] + FULL[1::2]
    m = ZooManifest(updated="now", skillmix_seed=0)
    raw = json.loads(m.model_dump_json())
    raw["entries"] = {n: json.loads(_entry(n).model_dump_json()) for n in shuffled}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    loaded = load_manifest(tmp_path, seed=0)
    assert list(loaded.entries) == FULL
    # the pool serves the zoo in that order, so seeded choices over experts repeat
    names = [e.name for e in zoo_config(tmp_path, loaded).pool.experts]
    assert names == FULL


def test_the_embedded_default_serves_its_profile_only_whatever_else_the_folder_holds(
    monkeypatch, tmp_path
):
    """A zoo folder that also holds another profile's models (a `--zoo reduced` run into
    the same folder) does not change the embedded default's pool, nor the reduced one's."""
    import agents.zoo.default as default

    reduced = [s.name for s in PROFILES["reduced"]]
    everything = ZooManifest(
        updated="now", skillmix_seed=0, entries={n: _entry(n) for n in FULL + reduced}
    )
    monkeypatch.setattr(default, "build_zoo", lambda *_a, **_kw: (everything, []))
    full = default.resolve_config(None, "full", tmp_path, progress=False)
    assert [e.name for e in full.pool.experts] == FULL
    small = default.resolve_config(None, "reduced", tmp_path, progress=False)
    assert [e.name for e in small.pool.experts] == reduced


def test_a_build_into_a_folder_of_other_files_is_refused_and_deletes_nothing(tmp_path):
    """`--dir ~/work` by mistake: a build replaces folders of its models' names and
    deletes hidden half-built ones, so it had deleted `strings/` and `.cache.old/` there."""
    import pytest

    from agents.zoo.build import ZooBuilder
    from orchestrator.errors import ConfigError

    mine = tmp_path / "work"
    (mine / "strings").mkdir(parents=True)
    (mine / "strings" / "notes.txt").write_text("mine")
    (mine / ".cache.old").mkdir()
    with pytest.raises(ConfigError, match=r"holds other files and no zoo.*new or empty --dir"):
        ZooBuilder(mine, "reduced").build()
    assert (mine / "strings" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in mine.iterdir()) == [".cache.old", "strings"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        ZooBuilder(tmp_path / "a-file", "reduced").build()
