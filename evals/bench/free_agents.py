"""`conclave bench free-agents`: the paper's example replayed through the real pipeline.

The facade (keywords, profiles, router, pool, vote) serves a stream of skillmix questions
on the incumbent's skills, one request at a time, with the free-agent monitor on. The
experts are test backends that know the gold answers and answer right with a set
accuracy: the incumbent specialist at `incumbent_accuracy` until request `drop_at`, when
a fault is injected and it falls to `degraded_accuracy`; a free agent at
`free_agent_accuracy` waits in the pool. As in the paper's example, one expert holds the
role at a time. A control run replays the same stream without the drop, for each seed.

The monitor watches with probes (`free_agents.probes_per_task`, 2 here): validation
questions asked alongside each request, which double or triple the evidence per request;
without them, detection within 50 requests at a false-release rate near zero is beyond
what one graded answer per request can show (a 95% -> 75% drop carries about 0.22 nats
per answer).
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel, ConfigDict, Field

from evals.bench.free_agents_pools import PoolsBenchResult
from orchestrator.config import ConclaveConfig, parse_config
from orchestrator.errors import ConfigError
from orchestrator.types import Item

if TYPE_CHECKING:
    from evals.skillmix import Split

CATEGORIES = ("geography", "chemistry")


class Decision(BaseModel):
    """One decision of the monitor during a stream, at the request it followed."""

    model_config = ConfigDict(extra="forbid")

    request: int
    event: str = Field(..., description="release, probation_start, promotion, ...")
    agent: str
    incumbent: str | None


class StreamRun(BaseModel):
    """One stream of requests, served one at a time with the monitor on."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    requests: int
    lost: int = Field(..., description="Requests answered with no answer.")
    serving_at_end: list[str]
    decisions: list[Decision]
    releases: int
    probes_asked: int


class ControlRun(StreamRun):
    """The same stream without the drop: any release is a false one."""

    accuracy: float | None


class DropRun(StreamRun):
    """The stream with the incumbent degraded from request `drop_at` on."""

    drop_at: int
    detected_after: int | None = Field(..., description="Requests from the drop to release.")
    probation_requests: int | None
    accuracy_before_drop: float | None
    accuracy_during: float | None = Field(..., description="From the drop to the promotion.")
    accuracy_after_swap: float | None


class MonitorSettings(BaseModel):
    """The free-agent settings the scenario overrides."""

    model_config = ConfigDict(extra="forbid")

    probes_per_task: float
    window: int
    min_samples: int


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: list[str]
    requests: int
    drop_at: int
    incumbent_accuracy: float
    degraded_accuracy: float
    free_agent_accuracy: float
    monitor: MonitorSettings


class FreeAgentsSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detected_after_max: int | None = Field(..., description="None if a run never released.")
    after_swap_gap_points_max: float | None
    after_swap_gap_points_mean: float | None
    lost: int
    false_releases_in_controls: int


class FreeAgentsBenchResult(BaseModel):
    """`conclave bench free-agents`: the scenario, each run and control run, a summary;
    with `--pools`, the heterogeneous pools served through the gateway too."""

    model_config = ConfigDict(extra="forbid")

    scenario: Scenario
    runs: list[DropRun]
    controls: list[ControlRun]
    summary: FreeAgentsSummary
    pools: PoolsBenchResult | None = None


def _items(split: Split, per_category: int) -> list[Item]:
    from evals.skillmix import generate

    return [
        Item(id=q.id, question=q.question, gold_answer=q.gold_answer, category=q.category)
        for q in generate(split, per_category, categories=CATEGORIES)
    ]


def _config(
    key: Path, folder: Path, seed: int, accuracies: dict[str, float], monitor: dict[str, Any]
) -> ConclaveConfig:
    def expert(name: str, accuracy: float) -> dict[str, Any]:
        backend = {
            "type": "fake",
            "answer": "The answer is ({letter}).",
            "answer_key": str(key),
            "accuracy": accuracy,
            "seed": seed,
        }
        return {"name": name, "backend": backend}

    return parse_config(
        {
            "pool": {
                "experts": [
                    *(expert(n, a) for n, a in accuracies.items()),
                    {
                        "name": "keywords",
                        "roles": ["keywords"],
                        "backend": {
                            "type": "fake",
                            "answer": "Keywords: {category}, facts",
                            "answer_key": str(key),
                        },
                    },
                ]
            },
            "routing": {"embedder": "ngram", "aggregator": "vote"},
            "free_agents": {
                "free_agents": ["backup"],
                "audit_log": str(folder / "audit.jsonl"),
                **monitor,
            },
            "cache_dir": str(folder),
        }
    )


@overload
def run_stream(
    folder: Path,
    seed: int,
    requests: int,
    drop_at: int,
    incumbent_accuracy: float,
    degraded_accuracy: float,
    free_agent_accuracy: float,
    monitor: dict[str, Any],
) -> DropRun: ...


@overload
def run_stream(
    folder: Path,
    seed: int,
    requests: int,
    drop_at: None,
    incumbent_accuracy: float,
    degraded_accuracy: float,
    free_agent_accuracy: float,
    monitor: dict[str, Any],
) -> ControlRun: ...


def run_stream(
    folder: Path,
    seed: int,
    requests: int,
    drop_at: int | None,
    incumbent_accuracy: float,
    degraded_accuracy: float,
    free_agent_accuracy: float,
    monitor: dict[str, Any],
) -> DropRun | ControlRun:
    """One run: profile on validation, then serve `requests` test questions in order;
    `monitor` overrides the free-agent settings."""
    from orchestrator.conclave import Conclave
    from workers.fake import FakeBackend

    validation, test = _items("validation", 15), _items("test", 40)
    key = folder / "answer_key.jsonl"
    key.write_text("".join(json.dumps(it.model_dump()) + "\n" for it in validation + test))
    accuracies = {"facts": incumbent_accuracy, "backup": free_agent_accuracy}
    run_dir = folder / f"seed{seed}-{'drop' if drop_at is not None else 'control'}"
    run_dir.mkdir()
    cfg = _config(key, run_dir, seed, accuracies, monitor)
    rng = random.Random(seed)
    stream = [rng.choice(test) for _ in range(requests)]
    served: list[bool] = []
    events: list[Decision] = []
    lost = 0
    with Conclave(cfg) as c:
        c.profile(validation, dataset="skillmix")
        facts, agents_monitor = c.pool.backends["facts"], c.monitor
        if not isinstance(facts, FakeBackend) or agents_monitor is None:
            raise ConfigError("the scenario needs the fake 'facts' expert and the monitor on")
        for i, item in enumerate(
            it.model_copy(update={"id": f"r{n}"}) for n, it in enumerate(stream)
        ):
            if i == drop_at:  # fault injection: from now on the incumbent is degraded
                facts.spec = facts.spec.model_copy(
                    update={"degrade_after": facts.answered, "degraded_accuracy": degraded_accuracy}
                )
            before = len(agents_monitor.log.read())
            (tr,) = c.answer([item], "symbolic-moe")
            if tr.choice is None or not tr.answers:
                lost += 1
            served.append(bool(tr.correct))
            events += [
                Decision(request=i, event=e.event, agent=e.agent, incumbent=e.incumbent)
                for e in agents_monitor.log.read()[before:]
            ]
        serving = agents_monitor.plan()[0]
        probes_asked = c.probes_asked

    def first(event: str, after: int = 0) -> int | None:
        return next(
            (
                e.request
                for e in events
                if e.event == event and e.request >= after and "facts" in (e.agent, e.incumbent)
            ),
            None,
        )

    def acc(lo: int, hi: int) -> float | None:
        part = served[lo:hi]
        return round(100 * sum(part) / len(part), 1) if part else None

    release = first("release", drop_at or 0)
    start = first("probation_start", drop_at or 0)
    promotion = first("promotion", drop_at or 0)
    common = StreamRun(
        seed=seed,
        requests=requests,
        lost=lost,
        serving_at_end=serving,
        decisions=events,
        releases=sum(e.event == "release" for e in events),
        probes_asked=probes_asked,
    )
    if drop_at is None:
        return ControlRun(**dict(common), accuracy=acc(0, requests))
    after = promotion + 1 if promotion is not None else requests
    return DropRun(
        **dict(common),
        drop_at=drop_at,
        detected_after=None if release is None else release - drop_at,
        probation_requests=None if promotion is None or start is None else promotion - start,
        accuracy_before_drop=acc(0, drop_at),
        accuracy_during=acc(drop_at, after),
        accuracy_after_swap=acc(after, requests),
    )


def run_free_agents_bench(
    seeds: int = 3,
    requests: int = 2000,
    drop_at: int = 1000,
    incumbent_accuracy: float = 0.95,
    degraded_accuracy: float = 0.75,
    free_agent_accuracy: float = 0.93,
    probes_per_task: float = 2.0,
    window: int = 80,
    progress: bool = True,
    first_seed: int = 0,
) -> FreeAgentsBenchResult:
    """`seeds` runs (seeds `first_seed`, `first_seed` + 1, ...) with the drop at `drop_at`
    and as many control runs without it."""
    from orchestrator.progress import progress_bar

    figures = (incumbent_accuracy, degraded_accuracy, free_agent_accuracy)
    settings = MonitorSettings(probes_per_task=probes_per_task, window=window, min_samples=window)
    monitor = settings.model_dump()
    runs: list[DropRun] = []
    controls: list[ControlRun] = []
    with (
        tempfile.TemporaryDirectory(prefix="conclave-free-agents-") as tmp,
        progress_bar(disable=not progress) as bar,
    ):
        task = bar.add_task("free-agent scenario", total=2 * seeds)
        for seed in range(first_seed, first_seed + seeds):
            runs.append(run_stream(Path(tmp), seed, requests, drop_at, *figures, monitor))
            bar.advance(task)
            controls.append(run_stream(Path(tmp), seed, requests, None, *figures, monitor))
            bar.advance(task)
    detected = [r.detected_after for r in runs if r.detected_after is not None]
    gap = [
        r.accuracy_before_drop - r.accuracy_after_swap
        for r in runs
        if r.accuracy_before_drop is not None and r.accuracy_after_swap is not None
    ]
    return FreeAgentsBenchResult(
        scenario=Scenario(
            categories=list(CATEGORIES),
            requests=requests,
            drop_at=drop_at,
            incumbent_accuracy=incumbent_accuracy,
            degraded_accuracy=degraded_accuracy,
            free_agent_accuracy=free_agent_accuracy,
            monitor=settings,
        ),
        runs=runs,
        controls=controls,
        summary=FreeAgentsSummary(
            detected_after_max=max(detected) if len(detected) == len(runs) else None,
            after_swap_gap_points_max=round(max(gap), 1) if len(gap) == len(runs) else None,
            after_swap_gap_points_mean=round(sum(gap) / len(gap), 1) if gap else None,
            lost=sum(r.lost for r in [*runs, *controls]),
            false_releases_in_controls=sum(r.releases for r in controls),
        ),
    )
