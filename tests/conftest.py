from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Keep every cache the tests make inside the repository's ignored .cache/ folder.
os.environ.setdefault("CONCLAVE_CACHE", str(ROOT / ".cache" / "tests"))
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "tests" / "vllm"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def held_port():
    """A loopback port another socket holds (bound and listening) for the test's length."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.fixture(autouse=True)
def _reset_fake_counters():
    from workers.fake import FakeBackend

    FakeBackend.max_active = 0
    FakeBackend.max_loaded = 0
    FakeBackend.loaded_now = set()
    yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process without the interpreter's teardown, once everything is
    reported. vLLM imports Triton, a nanobind extension that reports "leaked function
    ..." for a screen at interpreter exit (its objects are still referenced when the
    interpreter finalizes; harmless): after "N passed", the last thing a user read looked
    like a crash. CONCLAVE_TEST_TEARDOWN=1 keeps the teardown (to debug one)."""
    import sys

    if _EXIT not in config.stash or os.environ.get("CONCLAVE_TEST_TEARDOWN"):
        return
    if "triton" not in sys.modules:  # nothing would be printed: a normal exit
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash[_EXIT])


_EXIT = pytest.StashKey[int]()
