"""`conclave bench free-agents --pools`: free agents in heterogeneous pools, served for real.

What a user of `conclave serve` would see. Scripted experts (`evals.bench.scripted`)
answer MMLU-Pro questions behind an OpenAI-compatible server on 127.0.0.1 and are reached
through the remote (litellm) backend; the pool is served by `conclave serve` in a
process of its own (profiled at start on the shared MMLU-Pro validation file), where 8
client threads ask the routed model `conclave` test questions and send `/v1/feedback`
(with the right answer) on every reply. The free-agent monitor runs with its defaults
and `probes_per_task` 2.

Each pool has specialists (strong on their own subjects, weak elsewhere), a generalist
(mediocre everywhere) and a free agent nearly as good as one specialist (the victim) on
its subjects. In a drop run, the victim's accuracy on its subjects falls from request
`drop_at` on (fault injection in the scripted server); a control run serves the same
questions without it. Reported per run: every release of a healthy agent (a false
alarm), the requests from the drop to the victim's release and to the free agent's
promotion, served accuracy on the victim's subjects before the drop, during, and after
the promotion, and requests that failed or came back without an answer.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evals.bench.pools import KEY_ENV, SHARED_DATA, _data, _specialist, scripted_experts
from evals.bench.random_pools import HINT, drawn
from evals.bench.scripted import (
    CATEGORIES,
    Script,
    ScriptedExpert,
    ScriptedPool,
    resolve_specs,
    scripted_server,
)
from orchestrator.config import ConclaveConfig, parse_config
from orchestrator.errors import ConfigError


class HeteroPool(BaseModel):
    """A pool for the scenario: who degrades, to what, and who can replace it."""

    model_config = ConfigDict(extra="forbid")

    pool: ScriptedPool
    victim: str = Field(
        ...,
        description="The expert whose accuracy drops: on its subjects (the categories of "
        "its `accuracy`), or everywhere if it has none.",
    )
    free_agent: str = Field(..., description="The expert waiting in the free-agent pool.")
    degraded: float = Field(
        ..., ge=0.0, le=1.0, description="The victim's accuracy on its subjects after."
    )
    errors: float = Field(
        0.0, ge=0.0, le=1.0, description="The share of its calls that fail (HTTP 500) after."
    )
    garbage: float = Field(
        0.0, ge=0.0, le=1.0, description="The share of its answers with no option after."
    )

    @model_validator(mode="after")
    def _roles_in_pool(self) -> HeteroPool:
        names = [e.name for e in self.pool.experts]
        for field, name in (("victim", self.victim), ("free_agent", self.free_agent)):
            if name not in names:
                raise ValueError(
                    f"{field}: {name!r} is not one of the pool's experts ({', '.join(names)})"
                )
        if self.victim == self.free_agent:
            raise ValueError("victim and free_agent name the same expert; name two")
        if len(names) < 3:
            raise ValueError(
                "pool.experts: a scenario needs the victim, the free agent and at least one "
                "other expert to serve"
            )
        return self

    def subjects(self) -> set[str]:
        """The categories whose accuracy the drop changes (and the figures follow)."""
        return set(next(e for e in self.pool.experts if e.name == self.victim).accuracy) or set(
            CATEGORIES
        )


STEM = ("math", "physics", "engineering", "computer science")
LIFE = ("biology", "chemistry", "health")
SOCIAL = ("business", "economics", "psychology", "law")
HUMANITIES = ("history", "philosophy")


def _three_specialists() -> list[ScriptedExpert]:
    """The team `three-specialists` and `flaky` share: stem, life and social specialists
    (0.9 on their subjects, 0.3 elsewhere) and a 0.6 generalist."""
    return [
        _specialist("stem", STEM, 0.9, 0.3),
        _specialist("life", LIFE, 0.9, 0.3),
        _specialist("social", SOCIAL, 0.9, 0.3),
        ScriptedExpert(name="generalist", default=0.6),
    ]


def _stem_falls(name: str, description: str, degraded: float) -> HeteroPool:
    """The three specialists and the generalist, with a free agent at 0.89 on stem's
    subjects; stem's accuracy there falls to `degraded`."""
    return HeteroPool(
        pool=ScriptedPool(
            name=name,
            description=description,
            experts=[*_three_specialists(), _specialist("understudy", STEM, 0.89, 0.35)],
        ),
        victim="stem",
        free_agent="understudy",
        degraded=degraded,
    )


POOLS: dict[str, HeteroPool] = {
    p.pool.name: p
    for p in (
        _stem_falls(
            "three-specialists",
            "stem, life and social specialists (0.9 on their subjects, 0.3 elsewhere), a 0.6 "
            "generalist; stem drops to 0.3; the free agent is 0.89 on stem's subjects",
            0.3,
        ),
        _stem_falls(
            "mild",
            "as three-specialists, but stem falls only to 0.7 (a drop a reward floor would "
            "miss and a probation scored on agreement with the incumbent could not settle); "
            "the free agent is 0.89 on stem's subjects",
            0.7,
        ),
        HeteroPool(
            pool=ScriptedPool(
                name="uneven",
                description="a strong life specialist (0.95), a weaker social one (0.75), "
                "a 0.5 generalist; the life specialist drops to 0.45; the free agent is "
                "0.94 on life's subjects",
                experts=[
                    _specialist("life", LIFE, 0.95, 0.3),
                    _specialist("social", SOCIAL, 0.75, 0.35),
                    ScriptedExpert(name="generalist", default=0.5),
                    _specialist("backup", LIFE, 0.94, 0.3),
                ],
            ),
            victim="life",
            free_agent="backup",
            degraded=0.45,
        ),
        HeteroPool(
            pool=ScriptedPool(
                name="narrow",
                description="stem, life and social specialists at 0.85, a humanities one "
                "at 0.9 on two subjects only (history, philosophy), a 0.55 generalist; "
                "humanities drops to 0.5; the free agent is 0.89 on its subjects",
                experts=[
                    _specialist("stem", STEM, 0.85, 0.3),
                    _specialist("life", LIFE, 0.85, 0.3),
                    _specialist("social", SOCIAL, 0.85, 0.3),
                    _specialist("humanities", HUMANITIES, 0.9, 0.3),
                    ScriptedExpert(name="generalist", default=0.55),
                    _specialist("scholar", HUMANITIES, 0.89, 0.3),
                ],
            ),
            victim="humanities",
            free_agent="scholar",
            degraded=0.5,
        ),
        HeteroPool(
            pool=ScriptedPool(
                name="flaky",
                description="stem, life and social specialists (0.9 on their subjects), a "
                "0.6 generalist; social starts failing: 30% of its calls get an HTTP 500 and "
                "20% of its answers name no option (its right answers stay right); the free "
                "agent is 0.89 on social's subjects",
                experts=[*_three_specialists(), _specialist("deputy", SOCIAL, 0.89, 0.3)],
            ),
            victim="social",
            free_agent="deputy",
            degraded=0.9,
            errors=0.3,
            garbage=0.2,
        ),
    )
}


class PoolRun(BaseModel):
    """One stream of requests through the gateway."""

    model_config = ConfigDict(extra="forbid")

    pool: str
    seed: int
    requests: int
    drop_at: int | None = Field(..., description="None: a control run.")
    lost: int = Field(..., description="Requests that failed or came back without an answer.")
    false_releases: int = Field(
        ...,
        description="Releases of a healthy agent (any, in a control run; another than "
        "the victim, or the victim before the drop, in a drop run).",
    )
    releases: list[str] = Field(
        ..., description="Every release: 'agent@request: the monitor's reason'."
    )
    decisions: int = Field(..., description="Audit log entries.")
    detected_after: int | None = Field(
        None, description="Requests sent from the drop to the victim's release."
    )
    promoted_after: int | None = Field(
        None, description="Requests sent from the drop to the free agent's promotion."
    )
    accuracy_before: float | None = Field(
        None, description="Served accuracy (%) on the victim's subjects before the drop."
    )
    accuracy_during: float | None = Field(None, description="From the drop to the promotion.")
    accuracy_after: float | None = Field(None, description="After the promotion.")
    free_agent_alone_after: float | None = Field(
        None,
        description="What the free agent alone answers right (%) on the same questions "
        "after the promotion: the level the served accuracy can reach without help.",
    )
    victim_healthy_after: float | None = Field(
        None,
        description="What the victim before its fault answers right (%) on the same "
        "questions: the before level without the luck of the questions drawn before.",
    )
    seconds: float


def _config(pool: ScriptedPool, url: str, free_agent: str, cache: Path) -> ConclaveConfig:
    return parse_config(
        {
            "pool": {"experts": scripted_experts(pool, url, max_concurrency=32)},
            "routing": {"embedder": "ngram"},
            "gateway": {"access_log": False},
            "free_agents": {
                "free_agents": [free_agent],
                "probes_per_task": 2.0,
                "audit_log": str(cache / "audit.jsonl"),
            },
            "cache_dir": str(cache),
        }
    )


def run_pool_stream(
    spec: HeteroPool,
    seed: int,
    requests: int,
    drop_at: int | None,
    folder: Path,
    clients: int = 8,
    on_answer: Callable[[], object] | None = None,
) -> PoolRun:
    """Serve `spec`'s pool with `conclave serve` (profiled on the validation file at
    start) and drive `requests` routed questions with feedback from `clients` threads;
    the victim degrades at request `drop_at`. `on_answer` is called after each request
    (from the client threads: a progress bar's advance)."""
    import sys

    import httpx

    from evals.bench.loopback import free_port, server
    from orchestrator.formats import load_file

    t0 = time.perf_counter()
    profile_file, test_file = _data(SHARED_DATA, 150, folder)
    validation, test = load_file(profile_file), load_file(test_file)
    os.environ.setdefault(KEY_ENV, "scripted")
    script = Script(spec.pool, validation + test, seed)
    victim_subjects = spec.subjects()
    rng = random.Random(seed)
    stream = [rng.choice(test) for _ in range(requests)]
    run = folder / f"{spec.pool.name}-{seed}-{'drop' if drop_at is not None else 'control'}"
    run.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    sent = iter(range(requests))
    lock = threading.Lock()
    with scripted_server(spec.pool, validation + test, seed, script=script) as url:
        config = _config(spec.pool, url, spec.free_agent, run / "cache")
        (run / "config.json").write_text(config.model_dump_json(exclude_none=True))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "--config"]
        cmd += [str(run / "config.json"), "--port", str(port), "--data", str(profile_file)]
        with server(cmd, f"{base}/readyz", run / "serve.log", timeout_s=600):

            def client() -> None:
                with httpx.Client(base_url=base, timeout=120) as http:
                    while True:
                        with lock:
                            n = next(sent, None)
                            if n is None:
                                return
                            if n == drop_at:  # fault injection, from this request on
                                inject_fault(script, spec)
                            started = time.time()
                        item = stream[n]
                        row: dict[str, Any] = {
                            "n": n,
                            "started": started,
                            "category": item.category,
                        }
                        try:
                            row |= _ask(http, item.question, item.gold_answer)
                        except Exception as exc:  # a lost request, counted
                            row["error"] = f"{type(exc).__name__}: {exc}"
                        with lock:
                            rows.append(row)
                        if on_answer is not None:
                            on_answer()

            with cf.ThreadPoolExecutor(clients) as ex:
                for fut in [ex.submit(client) for _ in range(clients)]:
                    fut.result()
            log = _audit(base)
    healthy = Script(spec.pool, validation + test, seed)  # the victim before its fault
    for row in rows:  # what the free agent alone, and the healthy victim, would answer
        row["alone"] = script.right(spec.free_agent, stream[row["n"]])
        row["healthy"] = healthy.right(spec.victim, stream[row["n"]])
    return _summarise(spec, seed, requests, drop_at, rows, log, victim_subjects, t0)


def _ask(http: Any, question: str, gold: str | None) -> dict[str, Any]:
    """One routed question and the user's feedback on its answer (with the right one)."""
    body = {"model": "conclave", "messages": [{"role": "user", "content": question}]}
    r = http.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    reply = r.json()
    choice = (reply.get("conclave") or {}).get("choice")
    right = choice == gold
    fb = http.post("/v1/feedback", json={"id": reply["id"], "correct": right, "answer": gold})
    fb.raise_for_status()
    return {"right": right, "answered": choice is not None}


def _audit(base: str) -> list[dict[str, Any]]:
    """The server's whole audit log through `GET /v1/agents`, a page at a time."""
    import httpx

    out: list[dict[str, Any]] = []
    offset: int | None = 0
    with httpx.Client(base_url=base, timeout=60) as http:
        while offset is not None:
            page = http.get("/v1/agents", params={"history": 500, "offset": offset}).json()
            out += page["history"]
            offset = page["next_offset"]
    return out


def inject_fault(script: Script, spec: HeteroPool) -> None:
    """From now on, `spec.victim` answers as its fault says (the server reads `script`)."""
    expert = script.experts[spec.victim]
    fault: dict[str, Any] = {"errors": spec.errors, "garbage": spec.garbage}
    if expert.accuracy:
        fault["accuracy"] = dict.fromkeys(expert.accuracy, spec.degraded)
    else:  # a generalist: it falls everywhere
        fault["default"] = spec.degraded
    script.experts[spec.victim] = expert.model_copy(update=fault)


def _summarise(
    spec: HeteroPool,
    seed: int,
    requests: int,
    drop_at: int | None,
    rows: list[dict[str, Any]],
    log: list[dict[str, Any]],
    subjects: set[str],
    t0: float,
) -> PoolRun:
    by_start = sorted(rows, key=lambda r: r["started"])

    def at(when: float) -> int:
        """The requests sent before `when`."""
        return sum(r["started"] < when for r in by_start)

    drop_time = next((r["started"] for r in rows if r["n"] == drop_at), None)
    releases = [(e["agent"], e["time"]) for e in log if e["event"] == "release"]
    reasons = [e["reason"] for e in log if e["event"] == "release"]
    false = [a for a, t in releases if drop_time is None or a != spec.victim or t < drop_time]
    victim_release = next(
        (t for a, t in releases if a == spec.victim and drop_time and t >= drop_time), None
    )
    promotion = next(
        (
            e["time"]
            for e in log
            if e["event"] == "promotion"
            and e["agent"] == spec.free_agent
            and drop_time is not None
            and e["time"] >= drop_time
        ),
        None,
    )

    def acc(lo: float, hi: float, key: str = "right") -> float | None:
        part = [
            r[key]
            for r in by_start
            if lo <= r["started"] < hi and r["category"] in subjects and "right" in r
        ]
        return round(100 * sum(part) / len(part), 1) if part else None

    inf = float("inf")
    end_during = promotion if promotion is not None else inf
    return PoolRun(
        pool=spec.pool.name,
        seed=seed,
        requests=requests,
        drop_at=drop_at,
        lost=sum("error" in r or not r.get("answered") for r in rows) + (requests - len(rows)),
        false_releases=len(false),
        releases=[f"{a}@{at(t)}: {why}" for (a, t), why in zip(releases, reasons, strict=True)],
        decisions=len(log),
        detected_after=None if victim_release is None else at(victim_release) - (drop_at or 0),
        promoted_after=None if promotion is None else at(promotion) - (drop_at or 0),
        accuracy_before=acc(0.0, drop_time if drop_time is not None else inf),
        accuracy_during=acc(drop_time, end_during) if drop_time is not None else None,
        accuracy_after=acc(promotion, inf) if promotion is not None else None,
        free_agent_alone_after=acc(promotion, inf, "alone") if promotion is not None else None,
        victim_healthy_after=acc(promotion, inf, "healthy") if promotion is not None else None,
        seconds=round(time.perf_counter() - t0, 1),
    )


class PoolsSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    false_releases: int = Field(..., description="Over every run and control run.")
    detected_after_max: int | None = Field(..., description="None if a drop went unseen.")
    after_gap_points_max: float | None = Field(
        ...,
        description="Largest (before - after the promotion) accuracy on the victim's "
        "subjects; None if a run promoted no one.",
    )
    after_below_free_agent_max: float | None = Field(
        ...,
        description="Largest (the free agent alone - served) accuracy on the victim's "
        "subjects after the promotion, on the same questions: what serving after the swap "
        "loses to the free agent's own answers (routing, the vote), apart from how the "
        "free agent compares with the healthy victim; None if a run promoted no one.",
    )
    lost: int


class PoolsBenchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pools: dict[str, str] = Field(..., description="Name -> description.")
    runs: list[PoolRun]
    controls: list[PoolRun]
    summary: PoolsSummary


def random_pool(seed: int) -> HeteroPool:
    """A heterogeneous pool drawn from `seed`: a test world no one tuned the monitor to.

    2-5 specialists on disjoint random sets of 1-6 subjects (0.6-0.98 on each, 0.2-0.4
    elsewhere; the subjects left over are nobody's), a generalist at 0.45-0.7
    everywhere, and a free agent shadowing one specialist, the victim: 0.93-1.0 of its
    accuracy on each of its subjects. In the drop, the victim's accuracy on its subjects
    falls 0.3-0.45 below its lowest there (to no less than 0.1); in a third of the pools
    5-15% of its calls also fail (HTTP 500)."""
    rng = random.Random(seed)
    subjects = rng.sample(CATEGORIES, len(CATEGORIES))
    count = rng.randint(2, 5)
    experts: list[ScriptedExpert] = []
    for n in range(count):
        # leave at least one subject for each specialist still to come
        mine = subjects[: rng.randint(1, min(6, len(subjects) - (count - 1 - n)))]
        subjects = subjects[len(mine) :]
        experts.append(
            ScriptedExpert(
                name=f"s{n}",
                accuracy={c: round(rng.uniform(0.6, 0.98), 2) for c in mine},
                default=round(rng.uniform(0.2, 0.4), 2),
            )
        )
    victim = rng.choice(experts)
    free = ScriptedExpert(
        name="fa",
        accuracy={c: round(a * rng.uniform(0.93, 1.0), 2) for c, a in victim.accuracy.items()},
        default=round(rng.uniform(0.2, 0.4), 2),
    )
    generalist = ScriptedExpert(name="gen", default=round(rng.uniform(0.45, 0.7), 2))
    degraded = round(max(min(victim.accuracy.values()) - rng.uniform(0.3, 0.45), 0.1), 2)
    errors = round(rng.uniform(0.05, 0.15), 2) if rng.random() < 1 / 3 else 0.0
    return HeteroPool(
        pool=ScriptedPool(
            name=f"random-{seed}",
            description=f"random pool {seed}: {count} specialists, a generalist; "
            f"{victim.name} ({len(victim.accuracy)} subjects) falls to {degraded}"
            + (f", {errors:.0%} of its calls fail" if errors else ""),
            experts=[*experts, generalist, free],
        ),
        victim=victim.name,
        free_agent=free.name,
        degraded=degraded,
        errors=errors,
    )


def resolve_pools(pools: Sequence[str | HeteroPool]) -> list[HeteroPool]:
    """Pools by name (`POOLS`, or `random-<seed>`: `random_pool`) or given whole (from
    `--pool-file`); `resolve_specs`."""
    return resolve_specs(drawn(pools, random_pool), POOLS, lambda p: p.pool.name, or_else=HINT)


def run_free_agent_pools(
    pools: Sequence[str | HeteroPool] | None = None,
    seeds: int = 2,
    requests: int = 2000,
    drop_at: int = 1000,
    progress: bool = True,
    first_seed: int = 0,
) -> PoolsBenchResult:
    """Each pool (default: every one in `POOLS`), `seeds` drop runs (seeds `first_seed`,
    `first_seed` + 1, ...) and as many control runs."""
    from orchestrator.progress import progress_bar

    specs = resolve_pools(pools or list(POOLS))
    if not 0 < drop_at < requests:
        raise ConfigError(f"drop_at {drop_at} must fall inside the {requests} requests")
    runs: list[PoolRun] = []
    controls: list[PoolRun] = []
    with (
        tempfile.TemporaryDirectory(prefix="conclave-free-agent-pools-") as tmp,
        progress_bar(disable=not progress) as bar,
    ):
        # in requests, not runs: one run takes minutes
        task = bar.add_task("free agents in pools", total=2 * seeds * len(specs) * requests)

        def answered() -> None:
            bar.advance(task)

        for spec in specs:
            for seed in range(first_seed, first_seed + seeds):
                for drop, out in ((drop_at, runs), (None, controls)):
                    kind = "control" if drop is None else "drop"
                    bar.update(task, description=f"{spec.pool.name}, seed {seed}, {kind}")
                    out.append(
                        run_pool_stream(spec, seed, requests, drop, Path(tmp), on_answer=answered)
                    )
    detected = [r.detected_after for r in runs]
    gaps = [
        r.accuracy_before - r.accuracy_after
        for r in runs
        if r.accuracy_before is not None and r.accuracy_after is not None
    ]
    below = [
        r.free_agent_alone_after - r.accuracy_after
        for r in runs
        if r.free_agent_alone_after is not None and r.accuracy_after is not None
    ]
    return PoolsBenchResult(
        pools={s.pool.name: s.pool.description for s in specs},
        runs=runs,
        controls=controls,
        summary=PoolsSummary(
            false_releases=sum(r.false_releases for r in [*runs, *controls]),
            detected_after_max=None if None in detected else max(d or 0 for d in detected),
            after_gap_points_max=round(max(gaps), 1) if len(gaps) == len(runs) else None,
            after_below_free_agent_max=round(max(below), 1) if len(below) == len(runs) else None,
            lost=sum(r.lost for r in [*runs, *controls]),
        ),
    )
