from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Keep every cache the tests make inside the repository's ignored .cache/ folder.
os.environ.setdefault("CONCLAVE_CACHE", str(ROOT / ".cache" / "tests"))
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "tests" / "vllm"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(autouse=True)
def _reset_fake_counters():
    from workers.fake import FakeBackend

    FakeBackend.max_active = 0
    FakeBackend.max_loaded = 0
    FakeBackend.loaded_now = set()
    yield
