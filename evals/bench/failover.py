"""`conclave bench failover`: the routed model while one of its experts dies.

`conclave serve` runs the embedded default in a process of its own (the gateway on
127.0.0.1, its experts' vLLM engines in Ray actors, every expert preloaded). Closed-loop
clients ask `conclave` skillmix test questions for a while (the baseline), then for a
while more during which this process, attached to the server's Ray, kills the actor of
one expert (by default the one most questions are routed to, by `/v1/route`) with
`ray.kill`, as a crashed engine process would be. The pool restarts it in the
background; under `routing.on_expert_down: failover` its questions go to the next best
expert meanwhile. Reported per phase: requests, failures, and latency percentiles of the
questions routed to other experts (what a dead expert must not slow down) and of the
ones routed to it; and how long the restart took.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.bench.loopback import free_port, percentile_ms


class PhaseStats(BaseModel):
    """One phase's requests for one set of questions."""

    model_config = ConfigDict(extra="forbid")

    requests: int
    failed: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    failed_over: int = Field(0, description="Answers whose trace names an expert that was down.")


class SlowRequest(BaseModel):
    """One slow request: when it started and whom it asked."""

    model_config = ConfigDict(extra="forbid")

    ms: float
    started_s: float = Field(..., description="Seconds after the kill (negative: before).")
    experts: list[str] = Field(..., description="The experts that answered, in order.")
    down: list[str] = Field(..., description="Experts it found down.")


class FailoverBenchResult(BaseModel):
    """`conclave bench failover --json`."""

    model_config = ConfigDict(extra="forbid")

    machine: str
    clients: int
    seconds: float = Field(..., description="Length of each phase.")
    policy: str = Field(..., description="routing.on_expert_down")
    victim: str = Field(..., description="The expert whose actor was killed.")
    killed_at_s: float = Field(..., description="When, into the second phase.")
    restart_s: float | None = Field(
        ...,
        description="Seconds from the kill until it was loaded again (None: not in time).",
    )
    baseline_others: PhaseStats
    baseline_victim: PhaseStats
    after_kill_others: PhaseStats
    after_kill_victim: PhaseStats
    restarting_others: PhaseStats = Field(
        ..., description="Questions routed elsewhere sent while the victim's engine restarted."
    )
    restarted_others: PhaseStats = Field(
        ..., description="Questions routed elsewhere sent once it was back."
    )
    p99_ratio_others: float | None = Field(
        ..., description="p99 of questions routed elsewhere, after the kill over before."
    )
    never_victim_before: PhaseStats = Field(
        ..., description="Baseline requests whose route never reached the victim."
    )
    never_victim_after: PhaseStats = Field(
        ...,
        description="Requests after the kill whose route never reached the victim (neither "
        "asked nor skipped as down at any stage).",
    )
    p99_ratio_never_victim: float | None = Field(
        ..., description="p99 of requests whose route never reached the victim, after over before."
    )
    slowest_others: list[SlowRequest] = Field(
        default_factory=list,
        description="The slowest questions routed elsewhere after the kill: where the tail is.",
    )


def _ratio(after: PhaseStats, before: PhaseStats) -> float | None:
    """p99 after over p99 before."""
    return round(after.p99_ms / before.p99_ms, 2) if after.p99_ms and before.p99_ms else None


def _stats(rows: list[dict[str, Any]]) -> PhaseStats:
    ok = sorted(r["seconds"] for r in rows if r["status"] == 200)

    def pct(p: float) -> float | None:
        ms = percentile_ms(ok, p)
        return None if ms is None else round(ms, 1)

    return PhaseStats(
        requests=len(rows),
        failed=sum(r["status"] != 200 for r in rows),
        p50_ms=pct(0.5),
        p90_ms=pct(0.9),
        p99_ms=pct(0.99),
        failed_over=sum(bool(r["down"]) for r in rows),
    )


async def _drive(
    url: str, questions: list[str], clients: int, seconds: float, seed: int
) -> list[dict[str, Any]]:
    """Closed-loop clients for `seconds`, each asking random questions (seeded)."""
    import aiohttp

    rows: list[dict[str, Any]] = []
    stop = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients), timeout=timeout
    ) as session:

        async def client(k: int) -> None:
            rng = random.Random(seed * 1000 + k)
            while time.perf_counter() < stop:
                q = rng.choice(questions)
                body = {"model": "conclave", "messages": [{"role": "user", "content": q}]}
                t0 = time.perf_counter()
                async with session.post(url, json=body) as r:
                    reply = await r.json(content_type=None)
                    status = r.status
                trace = (reply.get("conclave") or {}) if status == 200 else {}
                rows.append(
                    {
                        "question": q,
                        "start": t0,
                        "status": status,
                        "seconds": time.perf_counter() - t0,
                        "down": trace.get("down") or [],
                        "experts": trace.get("experts") or [],
                    }
                )

        await asyncio.gather(*(client(k) for k in range(clients)))
    return rows


def run_failover_bench(
    clients: int = 8,
    seconds: float = 30.0,
    victim: str | None = None,
    policy: str = "failover",
    kill_after_s: float = 2.0,
    progress: bool = True,
) -> FailoverBenchResult:
    """Serve the embedded default, drive it, kill one expert's actor, drive it again."""
    import tempfile
    from pathlib import Path

    import httpx
    import ray

    from agents.zoo.default import resolve_config
    from evals.bench.gateway import _serve_cmd
    from evals.bench.loopback import server
    from evals.datasets import eval_items
    from evals.harness import machine
    from kernels.autotune import cpu_line
    from orchestrator.conclave import Conclave
    from orchestrator.errors import ConfigError
    from orchestrator.profiling import ensure_profile

    def say(line: str) -> None:
        if progress:
            print(line, flush=True)

    cfg = resolve_config(None, progress=progress, on_event=say)
    with Conclave(cfg) as c:  # the profile the server will reuse (built once, cached)
        ensure_profile(c, eval_items("skillmix"), "skillmix", cfg.resolved_cache_dir())
    vllm = [e.name for e in cfg.pool.experts if e.backend.type == "vllm"]
    config = cfg.model_dump(mode="json", exclude_none=True)
    config["routing"]["on_expert_down"] = policy
    config["gateway"] = {"access_log": False, "max_queue": 4096}
    questions = [it.question for it in eval_items("skillmix", "test")]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/chat/completions"
    killed: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="conclave-failover-") as tmp:
        folder = Path(tmp)
        cmd = _serve_cmd(config, folder, port, passthrough_only=False)
        with server(cmd, f"{base}/readyz", folder / "serve.log", timeout_s=900):
            first = {
                q: httpx.post(f"{base}/v1/route", json={"question": q}, timeout=60).json()[
                    "experts"
                ][0]
                for q in questions
            }
            victim = victim or Counter(first.values()).most_common(1)[0][0]
            if victim not in vllm:
                raise ConfigError(f"--victim {victim!r}: not a vLLM expert of the embedded default")
            say(f"baseline: {clients} clients for {seconds:g} s")
            before = asyncio.run(_drive(url, questions, clients, seconds, seed=0))
            ray.init(address="auto", namespace=cfg.cluster.namespace, log_to_driver=False)

            def loaded() -> bool:
                experts = httpx.get(f"{base}/v1/experts", timeout=10).json()["data"]
                return bool(next(e["loaded"] for e in experts if e["name"] == victim))

            def kill() -> None:
                time.sleep(kill_after_s)
                killed["at"] = time.perf_counter()
                (name,) = [  # the server's actor for the victim (named after its job)
                    a["name"]
                    for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith(f"expert:{victim}@")
                ]
                ray.kill(ray.get_actor(name), no_restart=True)
                say(f"killed {victim}'s actor")
                seen_down = False  # back once the server saw it die and loaded it again
                while time.perf_counter() - killed["at"] < seconds + 120:
                    time.sleep(0.2)
                    up = loaded()
                    seen_down = seen_down or not up
                    if seen_down and up:
                        killed["back"] = time.perf_counter()
                        say(f"{victim} back after {killed['back'] - killed['at']:.1f} s")
                        return

            killer = threading.Thread(target=kill, daemon=True)
            t0 = time.perf_counter()
            killer.start()
            say(f"with {victim}'s actor killed after {kill_after_s:g} s: {seconds:g} s")
            after = asyncio.run(_drive(url, questions, clients, seconds, seed=1))
            killer.join(timeout=150)
            ray.shutdown()
    others_before = [r for r in before if first[r["question"]] != victim]
    others_after = [r for r in after if first[r["question"]] != victim]
    base_st, hit = _stats(others_before), _stats(others_after)
    ratio = _ratio(hit, base_st)
    # a question can reach the victim later than its first stage (an escalation): those
    # whose route never did (asked, or skipped as down) are what its death must not slow
    never = [
        _stats([r for r in rows if victim not in r["experts"] + r["down"]])
        for rows in (before, after)
    ]
    back = killed.get("back")
    at = killed.get("at", t0)
    end = back if back is not None else float("inf")
    return FailoverBenchResult(
        machine=f"{machine()}; {cpu_line()}",
        clients=clients,
        seconds=seconds,
        policy=policy,
        victim=victim,
        killed_at_s=round(at - t0, 2),
        restart_s=round(back - at, 1) if back is not None else None,
        baseline_others=base_st,
        baseline_victim=_stats([r for r in before if first[r["question"]] == victim]),
        after_kill_others=hit,
        after_kill_victim=_stats([r for r in after if first[r["question"]] == victim]),
        p99_ratio_others=ratio,
        never_victim_before=never[0],
        never_victim_after=never[1],
        p99_ratio_never_victim=_ratio(never[1], never[0]),
        restarting_others=_stats([r for r in others_after if at <= r["start"] < end]),
        restarted_others=_stats([r for r in others_after if r["start"] >= end]),
        slowest_others=[
            SlowRequest(
                ms=round(r["seconds"] * 1000, 1),
                started_s=round(r["start"] - at, 2),
                experts=r["experts"],
                down=r["down"],
            )
            for r in sorted(others_after, key=lambda r: -r["seconds"])[:8]
        ],
    )
