"""The pool on the real path: vLLM CPU engines in actors of a local Ray cluster.

One pool for the module; each test continues from the state the previous one left, so
every engine start (~10-15 s each) is shared.
"""

from __future__ import annotations

import os

import pytest

from agents.zoo.tiny import TINY_ENGINE_ARGS
from orchestrator.config import parse_config
from workers.batch import GenerationRequest
from workers.cluster import actor_name, job_id
from workers.pool import ExpertPool

pytestmark = pytest.mark.real

AUTO_DTYPE = {k: v for k, v in TINY_ENGINE_ARGS.items() if k != "dtype"}


@pytest.fixture(scope="module")
def pool(tiny_models, ray_cluster):
    def vllm(name, path, gb=1.0, args=TINY_ENGINE_ARGS):
        return {
            "name": name,
            "backend": {"type": "vllm", "model": str(path), "engine_args": args},
            "sampling": {"max_tokens": 8},
            "resources": {"num_cpus": 0.25, "memory_gb": gb},
        }

    cfg = parse_config(
        {
            "pool": {
                "memory_budget_gb": 2.5,
                "experts": [
                    vllm("a", tiny_models["llama-a"]),
                    # b leaves the dtype to us (`workers.dtype`): float32 on a CPU
                    # without native bf16
                    vllm("b", tiny_models["llama-b"], args=AUTO_DTYPE),
                    vllm("moe", tiny_models["moe"]),
                    vllm("missing", tiny_models["llama-a"].parent / "no-such-model", gb=0.5),
                ],
            }
        }
    )
    p = ExpertPool(cfg)
    yield p
    p.close()


def chat(i, expert, **kw):
    return GenerationRequest(
        item_id=str(i), expert=expert, messages=[{"role": "user", "content": f"question {i}"}], **kw
    )


def test_batch_loads_each_expert_once_and_reports_bad_models(pool, ray_cluster):
    from ray.util.state import list_actors

    experts = ["a", "b", "missing", "a", "b", "a"]
    results = pool.run([chat(i, e) for i, e in enumerate(experts)])
    assert [r.item_id for r in results] == [str(i) for i in range(6)]
    for r in results:
        if r.expert == "missing":
            assert r.error.type == "ModelLoadError"
            # it names the expert and the cause; the server's paths stay in its log
            assert r.error.message.startswith("[missing] could not load its model")
            assert "does not exist" in r.error.message and "no-such-model" not in r.error.message
        else:
            assert r.ok and r.completion_tokens > 0 and r.prompt_tokens > 0
            assert r.finish_reason in {"stop", "length"}
    assert pool.stats.loads_by_expert == {"a": 1, "b": 1}
    assert pool.stats.evictions == 0 and pool.stats.load_failures == 1
    # a dtype the config names is kept; one it leaves open is float32 where the CPU has
    # no native bf16, vLLM's bf16 where it has
    from workers.dtype import cpu_native_bf16

    a, b = (pool.backends[e].load_info for e in ("a", "b"))
    assert a["dtype"] == "bfloat16" and "engine_args.dtype" in a["dtype_why"]
    assert b["dtype"] == ("bfloat16" if cpu_native_bf16() else "float32"), b
    live = {s.name: s for s in pool.status()}  # GET /v1/experts, `conclave experts list`
    assert (live["b"].dtype, live["b"].dtype_why) == (b["dtype"], b["dtype_why"])
    assert live["missing"].dtype is None
    # held down (pool.down_hold_s): asked again, it fails at once, no engine started
    (again,) = pool.run([chat(6, "missing")])
    assert again.error.type == "ModelLoadError" and "held down" in again.error.message
    assert "does not exist" in again.error.message and pool.stats.load_failures == 1
    assert pool.unavailable() == {"missing"}
    assert "failed to load" in {s.name: s.down for s in pool.status()}["missing"]
    # named actors of this job, alive, and listed by the dashboard's state API
    names = {name: actor_name(name, job_id()) for name in ("a", "b")}
    for name in names.values():
        ray_cluster.get_actor(name, namespace="conclave")
    listed = {(a.name, a.state) for a in list_actors(limit=1000)}
    assert {(names["a"], "ALIVE"), (names["b"], "ALIVE")} <= listed, listed


SECOND_JOB = """
import json, sys
from orchestrator.config import parse_config
from workers.batch import GenerationRequest
from workers.pool import ExpertPool
with ExpertPool(parse_config(json.loads(sys.argv[1]))) as pool:
    (r,) = pool.run([GenerationRequest(item_id="0", expert="a", prompt="The answer is")])
    error = r.error and r.error.message
    print(json.dumps({"ok": r.ok, "actor": pool.backends["a"].actor_name, "error": error}))
"""

ATTACHED_JOB = """
import json, sys
from orchestrator.config import parse_config
from workers.batch import GenerationRequest
from workers.pool import ExpertPool
asks = [GenerationRequest(item_id=str(i), expert=e, prompt="The answer is")
        for i, e in enumerate(["a", "moe"])]
with ExpertPool(parse_config(json.loads(sys.argv[1]))) as pool:
    a, moe = pool.run(asks)
    print(json.dumps({"ok": a.ok, "actor": pool.backends["a"].actor_name,
                      "moe": moe.error and moe.error.message}))
"""


def _other_job(script: str, cfg: dict) -> dict:
    """Run `script` as another Ray driver with config `cfg`; what it printed last."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cfg)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_job_on_the_cluster_loads_its_own_experts_and_leaves_ours(pool, ray_cluster):
    """Another driver on the same Ray cluster (a second eval, or an eval beside a serve)
    with an expert of the same name gets an actor of its own, named after its job, and
    never touches this job's: ours answers afterwards with nothing reloaded."""
    assert pool.run([chat(0, "a")])[0].ok
    loads = dict(pool.stats.loads_by_expert)
    ours = pool.backends["a"].actor_name
    cfg = pool.config.model_dump(mode="json", exclude_none=True)
    cfg["pool"]["experts"] = [e for e in cfg["pool"]["experts"] if e["name"] == "a"]
    cfg["cluster"]["address"] = ray_cluster.get_runtime_context().gcs_address
    theirs = _other_job(SECOND_JOB, cfg)
    assert theirs["ok"], theirs
    assert theirs["actor"] != ours and theirs["actor"].startswith("expert:a@")
    ray_cluster.get_actor(ours, namespace="conclave")  # still alive
    assert pool.run([chat(1, "a")])[0].ok
    assert pool.stats.loads_by_expert == loads and pool.stats.restarts == 0


def test_a_job_attached_to_ours_uses_our_engines_and_leaves_them_running(pool, ray_cluster):
    """Sharing is explicit: a second driver with `cluster.attach` set to our job id asks
    our loaded engine (same actor name, nothing loaded) and, when it closes, stops
    nothing of ours; an expert we have not loaded fails there, naming the fix."""
    assert pool.run([chat(0, "a")])[0].ok
    loads = dict(pool.stats.loads_by_expert)
    ours = pool.backends["a"].actor_name
    cfg = pool.config.model_dump(mode="json", exclude_none=True)
    cfg["pool"]["experts"] = [e for e in cfg["pool"]["experts"] if e["name"] in ("a", "moe")]
    cfg["cluster"]["address"] = ray_cluster.get_runtime_context().gcs_address
    cfg["cluster"]["attach"] = job_id()
    theirs = _other_job(ATTACHED_JOB, cfg)
    assert theirs["ok"], theirs
    assert theirs["actor"] == ours  # our engine, not a copy
    if "moe" in pool.resident:
        assert theirs["moe"] is None
    else:
        assert "has no loaded engine for this expert" in theirs["moe"]
    ray_cluster.get_actor(ours, namespace="conclave")  # still alive after they closed
    assert pool.run([chat(1, "a")])[0].ok
    assert pool.stats.loads_by_expert == loads and pool.stats.restarts == 0


def test_second_batch_loads_nothing_and_honours_sampling(pool):
    loads = pool.stats.loads
    results = pool.run(
        [chat(0, "b", sampling={"max_tokens": 3}), chat(1, "a", sampling={"max_tokens": 5})]
    )
    assert [r.completion_tokens for r in results] == [3, 5]
    assert pool.stats.loads == loads


def test_raw_prompt_and_greedy_determinism(pool):
    reqs = [GenerationRequest(item_id=str(i), expert="a", prompt="The answer is") for i in range(2)]
    first, second = pool.run(reqs)
    assert first.ok and first.text == second.text


def test_a_request_joins_the_running_batch(pool):
    """Continuous batching: a short request sent while a long one generates on the same
    engine is answered before the long one ends, not queued behind it. The short one goes
    out once the long one's first tokens have streamed back, not after a fixed sleep: on a
    fast CPU the long answer had finished within the sleep, and the test proved nothing."""
    import threading
    import time

    from workers.batch import GenerationResult

    done: dict[str, float] = {}
    generating = threading.Event()
    long_events: list[object] = []

    def run_long() -> None:
        for event in pool.stream(chat(0, "a", sampling={"max_tokens": 400})):
            long_events.append(event)
            generating.set()
        done["long"] = time.monotonic()

    pool.run([chat(9, "a", sampling={"max_tokens": 1})])  # loaded, so the answer streams
    thread = threading.Thread(target=run_long)
    thread.start()
    assert generating.wait(60), "the long request never started generating"
    (short_r,) = pool.run([chat(1, "a", sampling={"max_tokens": 2})])
    done["short"] = time.monotonic()
    thread.join(120)
    long_r = long_events[-1]
    assert isinstance(long_r, GenerationResult)
    assert long_r.completion_tokens == 400 and short_r.completion_tokens == 2
    assert done["short"] < done["long"]


def test_streaming_gives_the_answer_token_by_token_and_a_reader_can_leave(pool):
    from workers.batch import GenerationResult

    (whole,) = pool.run([chat(0, "a", sampling={"max_tokens": 12})])
    events = list(pool.stream(chat(0, "a", sampling={"max_tokens": 12})))
    pieces, result = events[:-1], events[-1]
    assert isinstance(result, GenerationResult) and result.completion_tokens == 12
    assert len(pieces) > 2 and "".join(pieces) == result.text == whole.text  # greedy
    # a reader that leaves after two pieces: the engine drops the request and goes on
    events = pool.stream(chat(1, "a", sampling={"max_tokens": 400}))
    assert isinstance(next(events), str) and isinstance(next(events), str)
    events.close()
    (after,) = pool.run([chat(2, "a", sampling={"max_tokens": 3})])
    assert after.ok and after.completion_tokens == 3


def test_seeded_sampling_repeats_on_an_idle_engine_whatever_ran_before(pool):
    """The CPU build cannot seed requests one by one; a call on an idle engine seeds the
    sampler from its requests' seeds, so a sampled batch repeats after other sampled work
    (an eval reusing its cached profile draws the keywords a fresh one drew)."""

    def batch(seed):
        return [
            chat(i, "a", sampling={"temperature": 1.0, "max_tokens": 12, "seed": seed + i})
            for i in range(3)
        ]

    first = [r.text for r in pool.run(batch(7))]
    unseeded = {"temperature": 1.0, "max_tokens": 20}
    pool.run([chat(5, "a", sampling=unseeded)])  # moves the engine's random state on
    again = [r.text for r in pool.run(batch(7))]
    other = [r.text for r in pool.run(batch(1000))]
    assert all(first) and first == again
    assert other != first  # the seeds decide


def test_a_request_the_engine_rejects_fails_alone(pool):
    """A prompt longer than the model's context fails with the engine's reason; the other
    requests of its batch, and one generating meanwhile, are answered by the same engine."""
    import concurrent.futures as cf
    import time

    import ray

    actor = ray.get_actor(pool.backends["a"].actor_name, namespace="conclave")
    pid, restarts = ray.get(actor.info.remote())["pid"], pool.stats.restarts
    too_long = GenerationRequest(
        item_id="long", expert="a", messages=[{"role": "user", "content": "word " * 2000}]
    )
    with cf.ThreadPoolExecutor(1) as ex:
        running = ex.submit(pool.run, [chat(9, "a", sampling={"max_tokens": 200})])
        time.sleep(0.5)  # generating when the bad batch arrives
        results = pool.run([chat(0, "a"), too_long, chat(2, "a")])
        (other,) = running.result()
    assert [r.ok for r in results] == [True, False, True], [r.error for r in results]
    bad = results[1].error
    assert bad.type == "RequestRejectedError" and not bad.retryable and "[a]" in bad.message
    assert "512" in bad.message  # the model's maximum length, from vLLM's message
    *pieces, streamed = pool.stream(too_long)  # streaming: refused the same way
    assert pieces == [] and streamed.error.type == "RequestRejectedError"
    assert other.ok and other.completion_tokens == 200
    assert pool.stats.restarts == restarts
    assert ray.get(actor.info.remote())["pid"] == pid  # the same engine throughout


def test_dead_engine_is_restarted_and_moe_expert_evicts_the_idle_one(pool, ray_cluster):
    import ray

    # a and b up first (run alone, `-k`, no earlier test has loaded them)
    assert all(r.ok for r in pool.run([chat(3, "a"), chat(4, "b")]))
    ray.kill(
        ray.get_actor(pool.backends["a"].actor_name, namespace="conclave")
    )  # the engine dies under us
    restarts, evictions = pool.stats.restarts, pool.stats.evictions
    results = pool.run([chat(0, "a"), chat(1, "moe"), chat(2, "a")])
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.attempts for r in results] == [2, 1, 2]
    assert pool.stats.restarts == restarts + 1
    # budget 2.5 GB: loading the MoE expert evicted b, which this batch did not need
    assert pool.stats.evictions == evictions + 1
    assert sorted(pool.resident) == ["a", "moe"]
    # the restart loaded at a lower priority (the others kept the CPU) and went back to
    # normal once loaded: no thread of the engine's process stays niced
    from workers.engine_host import can_renice

    info = pool.backends["a"].load_info
    assert info["load_nice"] == (pool.config.cluster.restart_nice if can_renice() else 0)
    assert _nices(info["pid"]) == {0}


def _nices(pid: int) -> set[int]:
    """The niceness of every thread of process `pid` (field 19 of /proc/.../stat)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.add(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


def test_per_expert_metrics_reach_rays_prometheus_export(pool, ray_cluster):
    """What the pool records through ray.util.metrics shows in Ray's metrics export (and
    so in the dashboard): requests, tokens, loads, evictions and errors per expert."""
    import time

    import httpx
    import ray

    pool.run([chat(0, "b"), chat(1, "missing")])
    port = ray._private.worker.global_worker.node.metrics_export_port
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # metrics reach the agent every few seconds
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        if "ray_conclave_expert_evictions_total{" in text and 'expert="b"' in text:
            break
        time.sleep(1)
    for name in ("requests", "tokens", "loads", "evictions", "errors"):
        assert f"ray_conclave_expert_{name}_total" in text, name
    assert "ray_conclave_expert_batch_seconds_bucket" in text
    assert "ray_conclave_expert_errors_total{" in text and 'error="ModelLoadError"' in text


def test_an_expert_no_node_can_take_fails_within_the_timeout_naming_what_it_needs(
    tiny_models, ray_cluster
):
    """An expert that needs what no node has free (here a custom resource no node has)
    fails its requests within `cluster.placement_timeout_s`, naming the expert, what it
    needs and what the roomiest node has free; nothing is left pending."""
    import time

    from ray.util.placement_group import placement_group_table

    cfg = parse_config(
        {
            "cluster": {"placement_timeout_s": 3},
            "pool": {
                "experts": [
                    {
                        "name": "picky",
                        "backend": {
                            "type": "vllm",
                            "model": str(tiny_models["llama-a"]),
                            "engine_args": TINY_ENGINE_ARGS,
                        },
                        "resources": {"num_cpus": 0.25, "custom": {"gpu_box": 1}},
                    }
                ]
            },
        }
    )
    t0 = time.perf_counter()
    with ExpertPool(cfg) as p:
        (r,) = p.run([chat(0, "picky")])
    assert time.perf_counter() - t0 < 30
    assert r.error.type == "ModelLoadError"
    msg = r.error.message
    assert msg.startswith("[picky] cannot be placed: no node had 0.25 CPU, 1 gpu_box free")
    assert "free now: largest node" in msg and "CPU" in msg
    states = [
        g["state"]
        for g in placement_group_table().values()
        if g["name"].startswith("expert:picky@")
    ]
    assert states and all(s == "REMOVED" for s in states)


def test_a_prompt_the_context_check_flags_is_one_the_engine_refuses(pool, tiny_models):
    """`workers.context.overflow` counts prompts with the expert's own tokenizer against
    its max_model_len: a prompt it flags is refused by the engine, one it passes is
    answered."""
    from orchestrator.config import ExpertConfig
    from workers.context import overflow

    short = [{"role": "user", "content": "word " * 20}]
    long = [{"role": "user", "content": "word " * 900}]  # over TINY_ENGINE_ARGS' 512
    spec = pool.config.pool.experts[0]
    assert isinstance(spec, ExpertConfig) and spec.name == "a"
    over = overflow(spec, [short, long, short])
    assert over is not None and over.refused == 1 and over.prompts == 3
    assert over.limit == f"{TINY_ENGINE_ARGS['max_model_len']} tokens" and over.longest > 512
    assert overflow(spec, [short]) is None
    ok, refused = pool.run(
        [
            GenerationRequest(item_id="0", expert="a", messages=short),
            GenerationRequest(item_id="1", expert="a", messages=long),
        ]
    )
    assert ok.ok and not refused.ok and refused.error.type == "RequestRejectedError"
