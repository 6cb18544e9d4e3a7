"""Freeing an expert's placement group never holds up a stop: a Ray that does not answer
(its GCS stopping with this process) is waited for once, briefly, then left to free it."""

from __future__ import annotations

import logging
import threading

import pytest


@pytest.fixture
def gcs(monkeypatch):
    """Ray's `remove_placement_group`, faked: a group named in `stuck` waits until
    `answer` is set; `removed` lists what was freed."""
    import importlib

    from workers import placement

    # the module (ray.util's attribute of that name is its function)
    ray_pg = importlib.import_module("ray.util.placement_group")

    state = {"stuck": set(), "answer": threading.Event(), "removed": [], "joins": []}

    def remove(pg):
        if pg in state["stuck"]:
            state["answer"].wait(30)
        state["removed"].append(pg)

    class Recorded(threading.Thread):
        def join(self, timeout=None):
            state["joins"].append(timeout)
            super().join(timeout)

    monkeypatch.setattr(ray_pg, "remove_placement_group", remove)
    monkeypatch.setattr(placement.threading, "Thread", Recorded)
    placement._unanswered.clear()
    yield state
    state["answer"].set()
    placement._unanswered.clear()


def test_an_unanswered_removal_is_waited_for_once_then_not(gcs, caplog):
    from workers.placement import _unanswered, release

    gcs["stuck"].update({"pg1", "pg2"})
    with caplog.at_level(logging.WARNING, logger="workers.placement"):
        release("pg1", wait_s=0.05)  # Ray does not answer: waited for, then left
        assert _unanswered.is_set() and gcs["removed"] == []
        release("pg2", wait_s=30)  # still unanswered: this one is not waited for at all
    assert gcs["joins"] == [0.05, 0]
    [warning] = caplog.records  # said once, not per expert
    assert "not freed a placement group within 0.05 s" in warning.getMessage()
    gcs["answer"].set()  # Ray answers after all: both are freed, and waits come back
    for t in threading.enumerate():
        if t.name == "release-placement":
            t.join(30)
    assert sorted(gcs["removed"]) == ["pg1", "pg2"] and not _unanswered.is_set()
    release("pg3", wait_s=7)
    assert gcs["joins"][-1] == 7 and gcs["removed"][-1] == "pg3"
