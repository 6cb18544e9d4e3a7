"""The pool's scheduling against fake backends: grouping, order, eviction, failures."""

from __future__ import annotations

import pytest

from orchestrator.config import parse_config
from orchestrator.errors import UnknownExpertError
from workers.batch import GenerationRequest
from workers.pool import ExpertPool


def make_pool(experts, budget=None, parallel=4, **pool) -> ExpertPool:
    cfg = parse_config(
        {
            "pool": {
                "memory_budget_gb": budget,
                "max_parallel_groups": parallel,
                **pool,
                "experts": [
                    {
                        "name": name,
                        "backend": {"type": "fake", **spec},
                    }
                    for name, spec in experts.items()
                ],
            }
        }
    )
    return ExpertPool(cfg)


def req(i, expert, text=None):
    return GenerationRequest(
        item_id=str(i), expert=expert, messages=[{"role": "user", "content": text or f"q{i}"}]
    )


def test_groups_by_expert_loads_once_and_keeps_input_order():
    pool = make_pool({"a": {}, "b": {}, "c": {}})
    experts = ["a", "b", "c", "b", "a", "a", "c", "b", "a"]
    reqs = [req(i, e) for i, e in enumerate(experts)]
    results = pool.run(reqs)
    assert [r.item_id for r in results] == [str(i) for i in range(len(experts))]
    assert [r.expert for r in results] == experts
    assert all(r.ok and r.text == f"{r.expert}: q{r.item_id}" for r in results)
    # one load and one generate call (one engine batch) per expert
    for name, ids in {"a": ["0", "4", "5", "8"], "b": ["1", "3", "7"], "c": ["2", "6"]}.items():
        backend = pool.backends[name]
        assert backend.loads == 1
        assert backend.calls == [ids]
    assert pool.stats.loads == 3


def test_second_batch_on_resident_models_loads_nothing():
    pool = make_pool({"a": {}, "b": {}})
    pool.run([req(0, "a"), req(1, "b")])
    assert pool.stats.loads == 2
    results = pool.run([req(2, "b"), req(3, "a"), req(4, "a")])
    assert all(r.ok for r in results)
    assert pool.stats.loads == 2
    assert sorted(pool.resident) == ["a", "b"]


def test_budget_evicts_the_model_the_batch_does_not_need():
    pool = make_pool({"a": {}, "b": {}, "c": {}}, budget=2.0)
    pool.run([req(0, "b"), req(1, "a")])  # b used before a
    assert sorted(pool.resident) == ["a", "b"]
    # b is needed again, a is not: a goes although b was used longer ago (not plain LRU)
    results = pool.run([req(2, "c"), req(3, "b")])
    assert all(r.ok for r in results)
    assert sorted(pool.resident) == ["b", "c"]
    assert pool.stats.evictions == 1
    assert pool.backends["b"].loads == 1
    assert pool.stats.loads == 3


def test_budget_smaller_than_every_model_loads_one_at_a_time():
    pool = make_pool({"a": {}, "b": {}, "c": {}}, budget=1.0)
    results = pool.run([req(i, e) for i, e in enumerate("abcabc")])
    assert all(r.ok for r in results)
    assert pool.stats.loads == 3 and pool.stats.evictions == 2
    assert len(pool.resident) == 1


def test_model_larger_than_budget_is_an_error_result_not_a_crash():
    cfg = parse_config(
        {
            "pool": {
                "memory_budget_gb": 2,
                "experts": [
                    {"name": "big", "backend": {"type": "fake"}, "resources": {"memory_gb": 3}},
                    {"name": "ok", "backend": {"type": "fake"}},
                ],
            }
        }
    )
    results = ExpertPool(cfg).run([req(0, "big"), req(1, "ok")])
    assert results[0].error.type == "ModelLoadError"
    assert "big" in results[0].error.message and "memory_budget_gb" in results[0].error.message
    assert results[1].ok


def test_failed_load_yields_error_results_and_others_complete():
    pool = make_pool({"bad": {"fail_load": True}, "good": {}})
    results = pool.run([req(i, e) for i, e in enumerate(["bad", "good", "bad", "good"])])
    assert [r.ok for r in results] == [False, True, False, True]
    for r in (results[0], results[2]):
        assert r.error.type == "ModelLoadError" and not r.error.retryable
        assert "[bad]" in r.error.message and "does not exist" in r.error.message
    assert pool.stats.load_failures == 1


def test_a_model_that_failed_to_load_is_held_down_then_tried_again():
    """A failed load holds its expert down for pool.down_hold_s, doubled with each
    failure in a row: a request for it fails at once naming the load's error and when
    it is tried again (no load tried), the router sees it down, `status` says why, and
    once the hold is over the next request tries the load again; one that works clears
    the hold."""
    pool = make_pool({"flaky": {"failed_loads": 2}, "good": {}})
    flaky, now = pool.backends["flaky"], [0.0]
    pool.holds.clock = lambda: now[0]

    def down() -> str | None:
        return {s.name: s.down for s in pool.status()}["flaky"]

    first = pool.run([req(0, "flaky"), req(1, "good")])
    assert first[0].error.type == "ModelLoadError" and first[1].ok
    assert flaky.load_tries == 1 and pool.unavailable() == {"flaky"}
    (held,) = pool.run([req(2, "flaky")])
    assert flaky.load_tries == 1  # not tried again
    assert held.error.type == "ModelLoadError" and not held.error.retryable
    assert "does not exist" in held.error.message and "again in 30 s" in held.error.message
    assert "failed to load" in down() and {s.name: s.down for s in pool.status()}["good"] is None
    now[0] = 30.0  # the hold is over: tried again, fails again, held twice as long
    pool.run([req(3, "flaky")])
    assert flaky.load_tries == 2 and "again in 60 s" in down()
    now[0] = 89.0
    assert pool.unavailable() == {"flaky"}
    now[0] = 90.0
    (ok,) = pool.run([req(4, "flaky")])
    assert ok.ok and flaky.load_tries == 3
    assert pool.unavailable() == set() and down() is None
    assert pool.stats.load_failures == 2


def test_no_hold_tries_the_load_on_every_request():
    pool = make_pool({"bad": {"fail_load": True}}, down_hold_s=0)
    for i in range(3):
        (r,) = pool.run([req(i, "bad")])
        assert r.error.type == "ModelLoadError" and "does not exist" in r.error.message
    assert pool.backends["bad"].load_tries == 3 and pool.unavailable() == set()


def test_engine_death_restarts_and_retries_once():
    pool = make_pool({"flaky": {"die_on_calls": [0]}, "steady": {}})
    results = pool.run([req(0, "flaky"), req(1, "steady"), req(2, "flaky")])
    assert all(r.ok for r in results)
    assert [r.attempts for r in results] == [2, 1, 2]
    assert pool.stats.restarts == 1
    assert pool.backends["flaky"].loads == 2


def test_restarting_engine_keeps_its_memory_share():
    from workers.fake import FakeBackend

    # a dies on its 2nd call and restarts slowly while c is being placed: the budget (2)
    # must hold throughout, so c evicts b rather than slipping into a's freed slot.
    pool = make_pool(
        {"a": {"die_on_calls": [1], "load_s": 0.2, "generate_s": 0.05}, "b": {}, "c": {}},
        budget=2.0,
    )
    pool.run([req(0, "a"), req(1, "b")])
    results = pool.run([req(2, "a"), req(3, "c")])
    assert all(r.ok for r in results) and results[0].attempts == 2
    assert FakeBackend.max_loaded <= 2
    assert sorted(pool.resident) == ["a", "c"]


def test_engine_that_dies_twice_reports_every_item():
    pool = make_pool({"doomed": {"die_on_calls": [0, 1]}})
    results = pool.run([req(0, "doomed"), req(1, "doomed")])
    assert [r.error.type for r in results] == ["EngineDeadError", "EngineDeadError"]
    assert all(r.attempts == 2 and r.error.retryable for r in results)


def test_unknown_expert_gets_an_error_naming_known_ones():
    pool = make_pool({"a": {}})
    results = pool.run([req(0, "zzz"), req(1, "a")])
    assert results[0].error.type == "UnknownExpertError"
    assert "'zzz'" in results[0].error.message and "a" in results[0].error.message
    assert results[1].ok
    assert pool.run([]) == []


def test_groups_on_different_experts_generate_concurrently():
    from workers.fake import FakeBackend

    pool = make_pool({n: {"generate_s": 0.2} for n in "abc"}, parallel=3)
    pool.run([req(i, e) for i, e in enumerate("abc")])
    assert FakeBackend.max_active >= 2
    FakeBackend.max_active = 0
    serial = make_pool({n: {"generate_s": 0.05} for n in "abc"}, parallel=1)
    serial.run([req(i, e) for i, e in enumerate("abc")])
    assert FakeBackend.max_active == 1


def test_progress_bar_runs_and_close_unloads():
    pool = make_pool({"a": {}, "b": {}})
    assert all(r.ok for r in pool.run([req(0, "a"), req(1, "b")], progress=True))
    pool.close()
    assert pool.resident == []


def test_request_needs_exactly_one_input():
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest(item_id="x", expert="a")
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest(
            item_id="x", expert="a", prompt="p", messages=[{"role": "user", "content": "c"}]
        )


def test_models_whose_actors_exceed_the_cluster_cpus_are_evicted_not_left_waiting():
    """Nine engines of 0.25 CPU on a 2-CPU cluster: the ninth cannot be placed while the
    other eight hold their CPUs (Ray would queue it forever); the pool evicts one."""
    from workers.fake import FakeBackend

    class CpuBound(FakeBackend):
        def actor_resources(self) -> dict[str, float]:
            return {"CPU": 0.25}

        def cluster_capacity(self) -> dict[str, float]:
            return {"CPU": 2.0}

    names = [f"m{i}" for i in range(9)]
    cfg = parse_config(
        {"pool": {"experts": [{"name": n, "backend": {"type": "fake"}} for n in names]}}
    )
    pool = ExpertPool(cfg, {e.name: CpuBound(e, cfg) for e in cfg.pool.experts})
    results = pool.run([req(i, n) for i, n in enumerate(names)])
    assert all(r.ok for r in results)
    assert pool.stats.evictions == 1 and len(pool.resident) == 8
    assert FakeBackend.max_loaded <= 8

    class Huge(CpuBound):
        def actor_resources(self) -> dict[str, float]:
            return {"CPU": 4.0}

    big = parse_config({"pool": {"experts": [{"name": "big", "backend": {"type": "fake"}}]}})
    pool = ExpertPool(big, {"big": Huge(big.pool.experts[0], big)})
    (r,) = pool.run([req(0, "big")])
    assert not r.ok and "CPU" in r.error.message


def test_preload_loads_what_fits_side_by_side_and_evicts_nothing():
    pool = make_pool({"a": {}, "b": {}, "bad": {"fail_load": True}, "c": {}}, budget=3.0)
    pool.run([req(0, "b")])  # b is already resident
    outcome = pool.preload()
    assert outcome["a"] == "loaded" and outcome["b"] == "resident"
    assert outcome["bad"].startswith("failed:") and "does not exist" in outcome["bad"]
    assert outcome["c"].startswith("skipped: does not fit next to the others: memory_gb")
    assert sorted(pool.resident) == ["a", "b"] and pool.stats.evictions == 0
    # a preloaded expert answers without a load; one skipped still loads on demand
    loads = pool.stats.loads
    assert all(r.ok for r in pool.run([req(1, "a"), req(2, "b")]))
    assert pool.stats.loads == loads
    assert pool.run([req(3, "c")])[0].ok and pool.stats.loads == loads + 1
    with pytest.raises(UnknownExpertError, match="'nope'.*known: a, b, bad, c"):
        pool.preload(["nope"])


def test_batches_from_several_threads_share_the_pool_without_evicting_each_other():
    """The gateway keeps several routed batches in flight: with room for one model at a
    time, batches on four threads still never unload a model under another's running
    group (the fake's engine dies if they do) nor hold two models at once."""
    import random
    import threading

    from workers.fake import FakeBackend

    pool = make_pool({n: {"generate_s": 0.01} for n in "abc"}, budget=1.0)
    FakeBackend.loaded_now.clear()
    FakeBackend.max_loaded = 0
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for round_ in range(8):
            experts = rng.choices("abc", k=rng.choice([1, 3]))
            res = pool.run([req(f"{seed}-{round_}-{i}", e) for i, e in enumerate(experts)])
            failures.extend(r.error.message for r in res if not r.ok and r.error)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert pool.stats.restarts == 0  # no engine lost mid-batch
    assert FakeBackend.max_loaded == 1  # the budget held across threads
    pool.close()


def test_a_dead_engine_restarts_once_in_the_background_and_routers_need_not_wait():
    """An engine dies mid-batch: a router's batch (wait_for_restart=False) gets
    ExpertUnavailableError for that expert at once and its other experts' answers; a
    client that named the expert waits for the restart. However many batches saw it
    die or asked meanwhile, the model loads again once."""
    pool = make_pool({"a": {"die_on_calls": [0], "load_s": 0.3}, "b": {}})
    pool.run([req(0, "b")])
    first = pool.run([req(1, "a"), req(2, "b")], wait_for_restart=False)
    a1, b1 = first
    assert a1.error.type == "ExpertUnavailableError" and a1.error.retryable and b1.ok
    assert "restarting" in a1.error.message and pool.unavailable() == {"a"}
    again = pool.run([req(3, "a")], wait_for_restart=False)  # still restarting: no wait
    assert again[0].error.type == "ExpertUnavailableError"
    waited = pool.run([req(4, "a")])  # a client of `a` itself waits for it
    assert waited[0].ok and pool.unavailable() == set()
    assert pool.backends["a"].loads == 2 and pool.stats.restarts == 1


def test_closing_the_pool_mid_batch_restarts_nothing():
    """Ctrl-C in an eval closes the pool while a batch generates: the engines go, the
    batch's requests fail with the engine gone, and no engine is loaded again."""
    import threading
    import time

    pool = make_pool({"a": {"generate_s": 0.5}, "b": {"generate_s": 0.5}})
    pool.run([req(0, "a"), req(1, "b")])  # loaded
    out: list = []
    t = threading.Thread(target=lambda: out.extend(pool.run([req(2, "a"), req(3, "b")])))
    t.start()
    deadline = time.monotonic() + 10
    while not all(b.generating for b in pool.backends.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.close()  # while both generate
    t.join(timeout=5)
    assert len(out) == 2 and not any(r.ok for r in out)
    assert all(r.error.type == "EngineDeadError" for r in out)
    assert pool.stats.restarts == 0 and pool.stats.loads == 2
    assert not any(b.loaded for b in pool.backends.values())


def test_only_unreachable_failures_in_a_row_hold_an_expert():
    """An answer breaks a run of unreachable failures; a failure that is the request's
    (a 4xx) neither counts nor breaks it."""
    from orchestrator.errors import RemoteRequestError, RemoteUnavailableError
    from workers.backoff import DownHolds
    from workers.batch import GenerationResult

    holds = DownHolds(10.0, after=3, clock=lambda: 0.0)
    ok = GenerationResult(item_id="0", expert="x", text="hi")
    down = GenerationResult.failed(req(0, "x"), RemoteUnavailableError("refused", expert="x"))
    bad = GenerationResult.failed(req(0, "x"), RemoteRequestError("401", expert="x"))
    assert holds.observe("x", [down, down, ok, down, down, bad]) == 0.0
    assert holds.down() == set()
    assert holds.observe("x", [down, down]) == 10.0 and holds.down() == {"x"}  # once
    assert "3 requests in a row failed, the last: refused" in holds.why("x")
    assert DownHolds(0.0, after=1).observe("x", [down] * 5) == 0.0  # holds off
