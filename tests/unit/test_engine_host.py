"""The engine host's pieces that run without vLLM: when a restart may load niced."""

from __future__ import annotations

import os
import resource

import pytest

from workers import engine_host


@pytest.mark.parametrize(
    ("euid", "rlimit", "expected"),
    [
        (0, 0, True),  # root may always go back
        (1000, 0, False),  # the default limit: a user may only raise its niceness
        (1000, 19, False),  # down to 20 - 19 = 1: not back to 0
        (1000, 20, True),
        (1000, resource.RLIM_INFINITY, True),
    ],
)
def test_a_restart_loads_niced_only_where_it_can_go_back(monkeypatch, euid, rlimit, expected):
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (rlimit, rlimit))
    assert engine_host.can_renice() is expected
