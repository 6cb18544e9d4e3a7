"""The free-agent monitor (RLFA, arXiv 2501.17903), made concrete.

Every agent that takes part in a task earns a reward (`reward`): accuracy when a gold
answer or a user's feedback is known, synergy (its answer agreed with the final one),
efficiency (tokens), minus a penalty for errors and unparsable output. Each serving
expert keeps its last `window` rewards.

The rules, all in `FreeAgentSettings`; the built-in swap rule (`agents.swap_rules`,
`window-mean`) judges releases and probations, another registered rule may replace it:

- **release**: a serving expert with at least `min_samples` rewards in its window and a
  window mean below `release_below` is released. One bad answer cannot do it: it needs a
  window's worth of them. Its replacement is the free agent with the best record (its
  validation accuracy, else the order of `free_agents`), which starts **probation**.
- **probation (shadow mode)**: the challenger answers every request the incumbent takes,
  in the same batch; its answers are scored against the same final answers and gold, and
  never reach the user or the vote. The incumbent keeps serving meanwhile.
- **promotion**: after at least `probation_min` shared tasks, the challenger is promoted
  when the one-sided lower bound (mean - z * standard error) of its paired reward
  difference over the incumbent exceeds `promote_margin` (under `expectation`, less
  `replace_within`: the incumbent was released on a fall from its own level, so the
  challenger need only not trail it), or when the lower bound of its own mean reward
  clears `release_below`. The incumbent goes to the free-agent pool, where it can come
  back through probation like any free agent.
- **rejection**: the upper bound of the paired difference falls below that margin after
  `probation_min` tasks, or `probation_max` tasks pass without a promotion. The
  challenger goes back to the pool, after a back-off that doubles with each rejection;
  the incumbent's window restarts, so another release needs fresh evidence, judged
  against its level from before the fall.

Swaps are applied between batches, under a lock: a batch planned before a swap completes
on the agents it was planned with. Every decision is appended to the audit log (JSON
lines, one fsynced write each) and counted in the Ray metrics.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, Field

from agents.swap_rules import Graded, cusum, own_level
from orchestrator.config import FreeAgentSettings, RewardWeights
from orchestrator.errors import ConfigError
from orchestrator.files import append_jsonl, read_jsonl

if TYPE_CHECKING:
    from agents.swap_rules import Decision
    from orchestrator.types import ExpertAnswer, Trace

Event = Literal["release", "probation_start", "promotion", "rejection", "no_replacement"]

log = logging.getLogger(__name__)

#: Graded answers kept per agent for a rule that judges them (`release_graded`).
GRADED_KEPT = 1000

#: Failures that are not the agent's doing, so not misses in its graded record: the pool
#: restarts a dead engine and asks another meanwhile, a request too long for it is the
#: client's, and a provider's rate limit is ours. Any other error (a 5xx, a timeout, a
#: failed generation) and an answer with no option in it count as a miss.
NOT_ITS_FAULT = frozenset(
    {"EngineDeadError", "ExpertUnavailableError", "RequestRejectedError", "RateLimitedError"}
)


class TaskOutcome(BaseModel):
    """What one agent did on one task, as the reward sees it."""

    agent: str
    task: str
    choice: str | None = Field(None, description="Its answer (an option letter).")
    correct: bool | None = Field(None, description="None when no gold or feedback is known.")
    agreed: bool = Field(False, description="Its answer was the final answer.")
    tokens: int = 0
    failed: bool = Field(False, description="An error or a timeout.")
    error_type: str | None = Field(None, description="The error's class, when it failed.")
    unparsable: bool = Field(False, description="An answer with no option in it.")
    expected: float | None = Field(
        None, description="Its accuracy on this question as its profile predicts it."
    )
    probe: bool = Field(False, description="A probe (a validation question), not a task.")


def reward(o: TaskOutcome, w: RewardWeights) -> float:
    """(a*accuracy + b*synergy + c*efficiency) / (the weights of the known terms)
    - d*penalty; see `RewardWeights`."""
    num = w.synergy * o.agreed + w.efficiency * max(0.0, 1 - o.tokens / w.token_budget)
    den = w.synergy + w.efficiency
    if o.correct is not None:
        num += w.accuracy * o.correct
        den += w.accuracy
    base = num / den if den else 0.0
    return base - w.penalty * (o.failed or o.unparsable)


def outcome(trace: Trace, a: ExpertAnswer, expected: float | None = None) -> TaskOutcome:
    """An expert's outcome on an answered question: its answer against the gold (when
    known) and against the final answer; `expected`, what its profile predicted."""
    return TaskOutcome(
        expected=expected,
        probe=trace.strategy == "probe",
        agent=a.expert,
        task=trace.id,
        choice=a.choice,
        correct=None if trace.gold is None or a.error else a.choice == trace.gold,
        agreed=a.choice is not None and a.choice == trace.choice,
        tokens=a.tokens,
        failed=a.error is not None,
        error_type=a.error_type if a.error is not None else None,
        unparsable=a.error is None and a.choice is None,
    )


def _graded(o: TaskOutcome, final_correct: bool, gold: str | None = None) -> TaskOutcome | None:
    """`o` with its correctness, from the right answer when the user gave it, else from
    whether the final answer was right (None when that does not tell: it disagreed with a
    wrong final answer), or None when it gave no answer."""
    if o.failed or o.unparsable:
        return None
    if gold is not None:
        return o.model_copy(update={"correct": o.choice == gold})
    if not o.agreed and not final_correct:
        return None
    return o.model_copy(update={"correct": o.agreed and final_correct})


class AuditEntry(BaseModel):
    """One decision of the monitor."""

    time: float = Field(default_factory=time.time)
    task: int = Field(description="Tasks the monitor had scored when it decided.")
    event: Event
    agent: str = Field(description="The agent the decision is about.")
    incumbent: str | None = Field(None, description="The expert it replaces or shadows.")
    reason: str
    figures: dict[str, float] = Field(default_factory=dict)


class AuditLog:
    """Append-only JSON lines; a crash mid-write leaves at most a partial last line, which
    reading leaves out and the next append cuts first (reading changes nothing: the CLI
    reads a log a serving monitor may be appending to).

    Decisions it cannot write (a full disk, a damaged log) are kept in memory, shown by
    `read`, logged as an error, and written with the next ones once it can: the answers
    whose scoring made them are not failed for it, and no decision is dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pending: list[AuditEntry] = []

    def append(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        with self._lock:
            self._pending.extend(entries)
            try:
                read_jsonl(self.path, repair=True)  # cuts a partial line left by a crash
                append_jsonl(self.path, [e.model_dump() for e in self._pending])
            except (ConfigError, OSError) as exc:
                log.error(
                    "audit log %s: %d decision(s) not written yet (%s); kept, and written "
                    "with the next ones once it can be",
                    self.path,
                    len(self._pending),
                    exc,
                )
                return
            self._pending.clear()

    def read(self) -> list[AuditEntry]:
        """The decisions written, then those not written yet."""
        with self._lock:
            written = [AuditEntry.model_validate(r) for r in read_jsonl(self.path)]
            return written + list(self._pending)

    def read_dicts(self) -> list[dict[str, Any]]:
        """`read`, as the JSON the gateway and the CLI show."""
        return [e.model_dump() for e in self.read()]


_Recent = tuple[list[TaskOutcome], list[tuple[str, TaskOutcome]], list[str]]


@dataclass
class Probation:
    challenger: str
    incumbent: str
    started: int
    #: task -> (incumbent's reward, challenger's reward) on the tasks both answered
    pairs: dict[str, tuple[float, float]] = field(default_factory=dict)
    graded: list[tuple[list[str], bool]] = field(default_factory=list)  # for its profile


def _cusum_now(graded: Sequence[Graded], settings: FreeAgentSettings) -> float:
    """The expectation test's statistic on an agent's evidence now."""
    return cusum(own_level(list(graded), settings)[1], settings.detect_drop)


class FreeAgentMonitor:
    """Scores agents, releases underperformers, runs probations, promotes on evidence."""

    def __init__(
        self,
        settings: FreeAgentSettings,
        experts: Sequence[str],
        log: AuditLog,
        record: dict[str, float] | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        from agents.swap_rules import SWAP_RULES

        #: judges releases and probations (`free_agents.swap_rule`)
        self.rule = SWAP_RULES.get(settings.swap_rule)
        #: the weights a probation's pairs are scored with (the rule's, or the rewards')
        paired = getattr(self.rule, "paired_weights", None)
        self.paired_weights = paired(settings.weights) if paired else settings.weights
        #: validation accuracy per expert, when profiled: picks the best free agent
        self.record = dict(record or {})
        self.free: list[str] = [e for e in settings.free_agents if e in experts]
        self.serving: list[str] = [e for e in experts if e not in self.free]
        self.windows: dict[str, deque[float]] = {e: deque(maxlen=settings.window) for e in experts}
        #: (right?, predicted accuracy, a probe?) per graded answer since its last reset
        self.graded: dict[str, deque[Graded]] = {e: deque(maxlen=GRADED_KEPT) for e in experts}
        self._fresh: set[str] = set()  # agents with evidence the rule has not judged yet
        #: a released agent's answers that set its level (`level_from`), kept while it
        #: serves on (a rejected challenger, no free agent): its fresh answers are judged
        #: against its level from before the fall, not a level set from its broken ones
        self.levels: dict[str, list[Graded]] = {}
        #: each agent's expectation statistic when its evidence was last judged
        self.cusums: dict[str, float] = {}
        #: agents released with no free agent to replace them: task flagged at
        self.flagged: dict[str, int] = {}
        #: free agents' rejections, and the task each may shadow again from (back-off)
        self.rejections: dict[str, int] = {}
        self.available_at: dict[str, int] = {}
        self.probations: dict[str, Probation] = {}  # by incumbent
        self.tasks = 0
        self._lock = threading.Lock()
        # recent tasks, for feedback: id -> (outcomes, [(incumbent, shadow)], keywords)
        self._recent: OrderedDict[str, _Recent] = OrderedDict()
        self.promoted_profiles: dict[str, list[tuple[list[str], bool]]] = {}
        from agents.monitor_metrics import AgentMetrics

        self.metrics = AgentMetrics()

    # ---- what the facade asks ----------------------------------------------------------

    def plan(self) -> tuple[list[str], dict[str, str]]:
        """The experts serving now, and the challenger shadowing each incumbent on
        probation: one consistent snapshot for a batch."""
        with self._lock:
            return list(self.serving), {i: p.challenger for i, p in self.probations.items()}

    def suspects(self) -> list[str]:
        """Serving agents whose CUSUM has reached `suspect_at` of `detect_threshold`: the
        facade probes them on every request until the statistic falls back or decides
        (a flagged agent waits for its cooldown instead)."""
        with self._lock:
            return [a for a in self.serving if self._suspect(a)]

    def _suspect(self, agent: str) -> bool:
        """`suspects`' test for one agent (the caller holds the lock)."""
        at = self.settings.suspect_at
        return (
            at is not None
            and agent in self.serving
            and agent not in self.flagged
            and self.cusums.get(agent, 0.0) >= at * self.settings.detect_threshold
        )

    def observe(
        self,
        traces: Iterable[Trace],
        shadow: dict[str, list[tuple[str, ExpertAnswer]]] | None = None,
        expected: dict[str, dict[str, float]] | None = None,
    ) -> list[AuditEntry]:
        """Score a batch: each trace's experts, and the shadow answers given for it
        (trace id -> [(incumbent, challenger's ExpertAnswer)]); `expected`, per trace id,
        each agent's accuracy on it as its profile predicts. Returns the decisions."""
        w = self.settings.weights
        shadow, expected = shadow or {}, expected or {}
        decisions: list[AuditEntry] = []
        with self._lock:
            for tr in traces:
                self.tasks += 1
                pred = expected.get(tr.id, {})
                outs = [outcome(tr, a, pred.get(a.expert)) for a in tr.answers]
                by_agent = {o.agent: reward(o, w) for o in outs}
                out_of = {o.agent: o for o in outs}
                for o in outs:
                    self._record(o.agent, by_agent[o.agent], o)
                shadows = []
                for incumbent, ans in shadow.get(tr.id, []):
                    p = self.probations.get(incumbent)
                    if p is None or ans.expert != p.challenger or incumbent not in by_agent:
                        continue  # a probation decided since this batch was planned
                    c = outcome(tr, ans, pred.get(ans.expert))
                    shadows.append((incumbent, c))
                    if c.correct is not None:  # evidence once graded: here, or by feedback
                        pw = self.paired_weights
                        p.pairs[tr.id] = (reward(out_of[incumbent], pw), reward(c, pw))
                        p.graded.append((tr.keywords, c.correct))
                self._recent[tr.id] = (outs, shadows, tr.keywords)
                while len(self._recent) > 10_000:
                    self._recent.popitem(last=False)
                decisions += self._decide()
        self.log.append(decisions)
        return decisions

    def feedback(self, task: str, correct: bool, gold: str | None = None) -> int:
        """A user graded the final answer of `task`, and may have given the right answer
        (`gold`), which grades every answer. Without it, an agent that agreed with the
        final answer was right if the user says so and wrong if not; one that disagreed
        with a right answer was wrong; one that disagreed with a wrong answer stays
        ungraded. Each graded serving agent earns an accuracy sample; a graded shadow
        answer becomes evidence in its challenger's probation. Returns how many answers
        were graded; raises KeyError for an unknown task."""
        w = self.settings.weights
        decisions: list[AuditEntry] = []
        with self._lock:
            outs, shadows, keywords = self._recent[task]
            graded = {o.agent: g for o in outs if (g := _graded(o, correct, gold)) is not None}
            for agent, g in graded.items():
                self._record(agent, reward(g, w), g)
            for incumbent, c in shadows:
                p = self.probations.get(incumbent)
                gc = _graded(c, correct, gold)
                if p is None or p.challenger != c.agent or gc is None or task in p.pairs:
                    continue
                inc = graded.get(incumbent) or next(o for o in outs if o.agent == incumbent)
                pw = self.paired_weights
                p.pairs[task] = (reward(inc, pw), reward(gc, pw))
                p.graded.append((keywords, bool(gc.correct)))
            decisions += self._decide()
        self.log.append(decisions)
        return len(graded) + sum(_graded(c, correct, gold) is not None for _, c in shadows)

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            shadows = {p.challenger: i for i, p in self.probations.items()}
            rows = []
            for agent, win in self.windows.items():
                state = (
                    "probation"
                    if agent in shadows
                    else "serving"
                    if agent in self.serving
                    else "free agent"
                )
                graded = self.graded[agent]
                rows.append(
                    {
                        "agent": agent,
                        "state": state,
                        "shadows": shadows.get(agent),
                        "window": len(win),
                        "mean_reward": round(statistics.fmean(win), 4) if win else None,
                        "graded": len(graded),
                        "accuracy": round(statistics.fmean(g[0] for g in graded), 4)
                        if graded
                        else None,
                        "expected": round(statistics.fmean(g[1] for g in graded), 4)
                        if graded
                        else None,
                        "cusum": round(_cusum_now(graded, self.settings), 3),
                        "suspect": self._suspect(agent),
                        "flagged_at": self.flagged.get(agent),
                        "rejections": self.rejections.get(agent, 0),
                        "available_at": self.available_at.get(agent)
                        if agent in self.free
                        else None,
                    }
                )
            return rows

    # ---- the rules ---------------------------------------------------------------------

    def _record(self, agent: str, r: float, o: TaskOutcome | None = None) -> None:
        """A serving agent's reward joins its window (and the metrics); a graded answer
        with a prediction joins its graded evidence."""
        if agent in self.serving and agent in self.windows:
            self.windows[agent].append(r)
            self.metrics.reward(agent, r)
            if o is None or o.expected is None:
                return
            if o.correct is not None:
                self.graded[agent].append((o.correct, o.expected, o.probe))
                self._fresh.add(agent)
            elif o.unparsable or (o.failed and o.error_type not in NOT_ITS_FAULT):
                self.graded[agent].append((False, o.expected, o.probe))  # a miss, gold or not
                self._fresh.add(agent)

    def _reset(self, agent: str, keep_level: bool = False) -> None:
        """Forget an agent's evidence: a new decision about it needs fresh evidence. With
        `keep_level` (it serves on after its release) the answers that set its level stay:
        relearnt from scratch, its level would be set from its broken answers and the fall
        never judged again (a specialist fallen from 0.65 to 0.33, its challenger
        rejected, served 900 more requests unreleased)."""
        self.windows[agent].clear()
        self.graded[agent].clear()
        self.cusums.pop(agent, None)
        level = self.levels.pop(agent, [])
        if keep_level:
            self.graded[agent].extend(level)

    def _judge(self, agent: str) -> Decision | None:
        graded_rule = getattr(self.rule, "release_graded", None)
        if graded_rule is None:
            return self.rule.release(list(self.windows[agent]), self.settings)
        if agent not in self._fresh:
            return None
        self._fresh.discard(agent)
        graded = list(self.graded[agent])
        judge = getattr(self.rule, "judge_graded", None)
        if judge is not None:  # the statistic and the decision in one pass
            self.cusums[agent], decision = judge(graded, self.settings)
            return cast("Decision | None", decision)
        self.cusums[agent] = _cusum_now(graded, self.settings)
        return cast("Decision | None", graded_rule(graded, self.settings))

    def _entry(
        self, event: Event, agent: str, incumbent: str | None, reason: str, **figures: float
    ) -> AuditEntry:
        self.metrics.decision(event, agent)
        return AuditEntry(
            task=self.tasks,
            event=event,
            agent=agent,
            incumbent=incumbent,
            reason=reason,
            figures={k: round(v, 4) for k, v in figures.items()},
        )

    def _decide(self) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        for agent in list(self.serving):
            if agent in self.probations:
                continue
            flagged = self.flagged.get(agent)
            if flagged is not None:
                # flagged once with no one to replace it: a free agent that is free now
                # goes to shadow it; otherwise it waits out the cooldown
                challenger = self._best_free()
                if challenger is not None:
                    del self.flagged[agent]
                    out.append(self._start(challenger, agent, f"flagged at task {flagged}: "))
                    continue
                if self.tasks - flagged < self.settings.flag_cooldown:
                    continue
                del self.flagged[agent]  # examined again, on the evidence since the flag
            release = self._judge(agent)
            if release is None:
                continue
            out.append(self._entry("release", agent, None, release.reason, **release.figures))
            level_from = int(release.figures.get("level_from", 0))
            self.levels[agent] = list(self.graded[agent])[:level_from]
            challenger = self._best_free()
            if challenger is None:
                self.flagged[agent] = self.tasks
                self.metrics.flag(agent, True)
                waiting = ", ".join(
                    f"{e} from task {self.available_at[e]}"
                    for e in self.free
                    if self.available_at.get(e, 0) > self.tasks
                )
                why = (
                    "no free agent waiting: it keeps serving, flagged; examined again "
                    f"after {self.settings.flag_cooldown} tasks or when a free agent is free"
                    + (f" ({waiting})" if waiting else "")
                )
                out.append(self._entry("no_replacement", agent, None, why))
                self._reset(agent, keep_level=True)  # ask again on fresh evidence
                continue
            out.append(self._start(challenger, agent))
        for incumbent, p in list(self.probations.items()):
            verdict = self.rule.verdict(list(p.pairs.values()), incumbent, self.settings)
            if verdict is None:
                continue
            if verdict.event == "promotion":
                self._swap(p)
            else:
                del self.probations[incumbent]
                self._to_pool(p.challenger, rejected=True)
                self._reset(incumbent, keep_level=True)
            out.append(
                self._entry(
                    verdict.event, p.challenger, incumbent, verdict.reason, **verdict.figures
                )
            )
        return out

    def _start(self, challenger: str, incumbent: str, why: str = "") -> AuditEntry:
        self.free.remove(challenger)
        self.probations[incumbent] = Probation(challenger, incumbent, self.tasks)
        self.metrics.flag(incumbent, False)
        reason = f"shadows {incumbent} on every task it takes and every trial question it is asked"
        return self._entry("probation_start", challenger, incumbent, f"{why}{reason}")

    def _to_pool(self, agent: str, rejected: bool) -> None:
        """`agent` to the free-agent pool, free to shadow someone again only after a
        back-off that doubles with each rejection it has had."""
        if rejected:
            self.rejections[agent] = self.rejections.get(agent, 0) + 1
        wait = self.settings.backoff_tasks * 2 ** max(self.rejections.get(agent, 0) - 1, 0)
        self.available_at[agent] = self.tasks + wait
        self.free.append(agent)

    def _swap(self, p: Probation) -> None:
        del self.probations[p.incumbent]
        at = self.serving.index(p.incumbent)
        self.serving[at] = p.challenger
        self._to_pool(p.incumbent, rejected=False)
        self._reset(p.incumbent)
        self.graded[p.challenger].clear()
        self.cusums.pop(p.challenger, None)
        win = self.windows[p.challenger]
        win.clear()
        win.extend(c for _, c in p.pairs.values())
        self.promoted_profiles[p.challenger] = p.graded
        self.metrics.swap(p.challenger, p.incumbent)

    def _best_free(self) -> str | None:
        """The free agent with the best record among those past their back-off."""
        ready = [e for e in self.free if self.available_at.get(e, 0) <= self.tasks]
        if not ready:
            return None
        return max(ready, key=lambda e: (self.record.get(e, -1.0), -self.free.index(e)))
