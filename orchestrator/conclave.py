"""The facade every front end uses (CLI, SDK, gateway): profile a pool, answer questions.

    with Conclave(config) as c:
        state = c.profile(validation_rows, dataset="skillmix")   # keywords, profiles, aggregator
        traces = c.answer(test_rows, strategy="symbolic-moe")

`answer` runs any registered strategy (`orchestrator.strategies`) as plan -> ask ->
combine: the strategy plans each question's experts (Symbolic-MoE's keyword stage runs
here), every distinct (question, expert) pair is asked in one pool batch grouped by
model, and the strategy's aggregator (`agents.aggregators`) combines the answers in one
more batch. Each answer comes back as a `Trace`: keywords, mapped skills, the routing
decision, every expert's answer, the aggregator's, the final choice, calls and tokens.
With the free-agent monitor on, the monitored strategy's batches also carry probes and
challengers' shadow answers (scored, never returned).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from orchestrator.asking import Asking, Streaming
from orchestrator.config import ConclaveConfig, Role
from orchestrator.errors import ConfigError
from orchestrator.extensions import check_extensions
from orchestrator.learning import RecentAnswers
from orchestrator.probes import ProbeScheduler
from orchestrator.questions import QuestionReader
from orchestrator.strategies import Plan, Strategy, StrategyContext, get_strategy
from orchestrator.traces import new_trace, probe_trace, weigh
from orchestrator.types import (
    ExpertAnswer,
    Item,
    Probe,
    RoutePlan,
    RoutingDecision,
    RoutingState,
    Trace,
    Usage,
)
from skills.router import Router, make_router

if TYPE_CHECKING:
    from agents.aggregators import AggregationContext, Aggregator, Combined
    from agents.free_agents import FreeAgentMonitor
    from orchestrator.protocol import ChatAnswer
    from skills.inventory import Embedder, SkillInventory
    from skills.neighbours import QuestionIndex
    from skills.profiles import ModelProfile, ProfileSet
    from workers.pool import ExpertPool


#: stages a strategy may add after its first batch (each one pool batch)
MAX_STAGES = 4


class Conclave(Asking):
    """A pool of experts plus the routing state learnt by `profile` (asking experts, and
    streaming an answer, in `orchestrator.asking.Asking`)."""

    def __init__(
        self,
        config: ConclaveConfig,
        pool: ExpertPool | None = None,
        embedder: Embedder | None = None,
        reuse_answers: bool = False,
    ) -> None:
        check_extensions(config)
        self.config = config
        #: reuse greedy experts' answers to questions they already answered (evals)
        self.reuse_answers = reuse_answers
        self._answers: dict[tuple[str, str, str], ExpertAnswer] = {}
        self._pool = pool
        self._embedder = embedder
        self.profiles: ProfileSet | None = None
        self.inventory: SkillInventory | None = None
        #: the embedded validation questions with each expert's outcome (profiling)
        self.questions: QuestionIndex | None = None
        #: where the routing state was loaded from or saved to: learning writes it back
        self.state_dir: Path | None = None
        #: answered questions, for feedback
        self.recent = RecentAnswers()
        #: one learner at a time (feedback arrives on the gateway's threads)
        self.learning = threading.Lock()
        #: reads questions against the profile: embeddings, neighbours, scope
        self.reader = QuestionReader(self)
        self._streaming = Streaming()
        self.state: RoutingState | None = None
        #: (the profiles as profiling left them, a copy the monitor's predictions use)
        self._reference: tuple[ProfileSet | None, ProfileSet | None] = (None, None)
        #: each expert's probe bank and its strength per question (`_own_probe`)
        self._banks: dict[str, tuple[list[Probe], dict[str, float]]] = {}
        self.monitor: FreeAgentMonitor | None = None
        self.probes = ProbeScheduler(config.free_agents.probes_per_task)
        if config.free_agents.active:
            from agents.free_agents import AuditLog, FreeAgentMonitor

            self.monitor = FreeAgentMonitor(
                config.free_agents, self.experts, AuditLog(config.audit_log_path())
            )

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def pool(self) -> ExpertPool:
        if self._pool is None:
            from workers.pool import ExpertPool

            self._pool = ExpertPool(self.config)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Conclave:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def experts(self) -> list[str]:
        """Every expert of the pool, free agents included (profiling asks them all)."""
        return self.config.pool.with_role(Role.EXPERT)

    @property
    def serving(self) -> list[str]:
        """The experts that answer users now: all but the free agents waiting."""
        return self.monitor.plan()[0] if self.monitor is not None else self.experts

    @property
    def probes_asked(self) -> int:
        """Probe questions asked so far (free-agent monitoring)."""
        return self.probes.asked

    def with_role(self, role: Role) -> list[str]:
        return self.config.pool.with_role(role)

    def embedder(self) -> Embedder:
        """The skill inventory's keyword embedder (MiniLM, or n-grams in dry runs)."""
        if self._embedder is None:
            from skills.inventory import MiniLMEmbedder, NgramEmbedder

            ngram = self.config.routing.embedder == "ngram"
            self._embedder = NgramEmbedder() if ngram else MiniLMEmbedder()
        return self._embedder

    # ---- stages -------------------------------------------------------------------------

    def keywords(
        self, items: Sequence[Item], progress: bool = False
    ) -> dict[str, tuple[list[str], int, Usage]]:
        """item id -> (keywords, calls, usage), from the keyword expert in one batch."""
        from skills.keywords import collect_keywords, keyword_requests

        name = self.config.routing.keyword_expert or next(iter(self.with_role(Role.KEYWORDS)), None)
        if name is None:
            raise ConfigError(
                "no keyword model: give one expert the role 'keywords' or set "
                "routing.keyword_expert"
            )
        settings = self.config.routing.keywords
        reqs = keyword_requests([(i.id, i.question) for i in items], name, settings)
        results = self.pool.run(reqs, progress=progress)
        kws = collect_keywords(results, settings)
        calls: dict[str, int] = {}
        usage: dict[str, Usage] = {}
        for r in results:
            item = r.item_id.rsplit("#kw", 1)[0]
            calls[item] = calls.get(item, 0) + 1
            usage[item] = usage.get(item, Usage()).plus(Usage(r.prompt_tokens, r.completion_tokens))
        return {
            i.id: (kws.get(i.id, []), calls.get(i.id, 0), usage.get(i.id, Usage())) for i in items
        }

    def aggregate(
        self,
        items: Sequence[Item],
        answers: Sequence[list[ExpertAnswer]],
        aggregator: str,
        progress: bool = False,
    ) -> list[Combined]:
        """Each item's answers combined by `aggregator` (a registered aggregator or an
        aggregator expert), in one pool batch when it asks an LLM."""
        from agents.aggregators import get_aggregator

        agg = get_aggregator(aggregator, self.with_role(Role.AGGREGATOR))
        return agg.combine(items, answers, self._aggregation_context(progress))

    def _aggregation_context(self, progress: bool) -> AggregationContext:
        from agents.aggregators import AggregationContext

        return AggregationContext(
            ask=lambda reqs: self.run(reqs, progress, stream=True),
            accuracy=self.state.accuracy if self.state is not None else {},
            progress=progress,
        )

    # ---- profiling ----------------------------------------------------------------------

    def profile(
        self,
        items: Sequence[Item],
        dataset: str,
        split: str = "validation",
        progress: bool = False,
    ) -> RoutingState:
        """Keywords for every item, every expert on every item, profiles (+1/-1 per keyword),
        the skill inventory, and the aggregator chosen on the aggregation benchmark
        (`orchestrator.profiling.profile`)."""
        from orchestrator.profiling import profile

        return profile(self, items, dataset, split, progress)

    # ---- answering ----------------------------------------------------------------------

    def prior_of(self, expert: str) -> float:
        """The prior strength `expert`'s estimates use (`RoutingState.prior_of`); before
        any profiling, `RoutingState`'s default."""
        if self.state is None:
            return float(RoutingState.model_fields["prior_strength"].default)
        return self.state.prior_of(expert)

    def profile_of(self, expert: str) -> ModelProfile | None:
        """The expert's profile: from profiling, or for a free agent promoted without one,
        the profile its graded probation answers built; None when there is neither."""
        from skills.profiles import ModelProfile

        if self.profiles is not None and expert in self.profiles.profiles:
            return self.profiles.profiles[expert]
        if self.monitor is not None and expert in self.monitor.promoted_profiles:
            prof = ModelProfile(expert=expert)
            for keywords, correct in self.monitor.promoted_profiles[expert]:
                prof.add(keywords, correct)
            return prof
        return None

    def expected(self, trace: Trace) -> dict[str, float]:
        """Each answering (and shadowing) agent's accuracy on the trace's question as its
        profile predicts, on the question's skills (else its keywords): what the free-agent
        monitor judges each agent against; an agent with no profile gets no prediction.

        From the profiles as profiling (or loading) left them, not as feedback goes on
        teaching them: a profile that learnt from a degraded agent's answers would predict
        the drop, and the monitor would never see it."""
        from skills.estimates import estimate

        if trace.strategy == "probe":  # a question from the expert's own bank, or not
            own = self._own_probe(trace)
            if own is not None:
                return own
        if self.profiles is not self._reference[0]:
            copy = self.profiles.model_copy(deep=True) if self.profiles is not None else None
            self._reference = (self.profiles, copy)
        reference = self._reference[1]
        skills = (trace.routing.skills if trace.routing is not None else []) or trace.keywords
        out: dict[str, float] = {}
        for a in [*trace.answers, *trace.shadow]:
            if a.expert in out:
                continue
            profile = (
                reference.profiles.get(a.expert) if reference is not None else None
            ) or self.profile_of(a.expert)
            if profile is not None:
                prior = self.prior_of(a.expert)
                out[a.expert] = estimate(a.expert, profile, skills, prior).accuracy
        return out

    def _own_probe(self, probe: Trace) -> dict[str, float] | None:
        """A probe from the answering expert's own bank: its strength there (its
        validation accuracy in the question's category); None for another's question
        (its profile's prediction then)."""
        a = probe.answers[0] if probe.answers else None
        if a is None or self.state is None:
            return None
        bank = self._banks.get(a.expert)
        if bank is None or bank[0] is not self.state.probes.get(a.expert):
            own = self.state.probes.get(a.expert) or []
            strengths = {p.item.id: p.strength for p in own if p.strength is not None}
            bank = self._banks[a.expert] = (own, strengths)
        strength = bank[1].get(probe.id.split(":", 1)[-1])
        return None if strength is None else {a.expert: strength}

    def router(self, experts: Sequence[str] | None = None) -> Router:
        """The router over `experts` (default: those serving now). A free agent promoted
        without a validation profile is routed by the profile its probation built."""
        if self.profiles is None:
            raise ConfigError("no profiles yet: run `profile` (or load saved ones) first")
        experts = list(experts if experts is not None else self.serving)
        skills = {e: p.skills for e in experts if (p := self.profile_of(e)) is not None}
        return make_router(skills or {e: {} for e in experts}, self.config.routing.router)

    def llm_aggregator(self) -> str:
        """Mixture-of-Agents synthesises with an LLM: the chosen aggregator, or, when the
        vote was chosen, the best-scoring LLM candidate (else the first one)."""
        llms = self.with_role(Role.AGGREGATOR)
        if self.state is not None and self.state.aggregator in llms:
            return self.state.aggregator
        scores = self.state.aggregator_scores if self.state else {}
        ranked = sorted(llms, key=lambda a: -scores.get(a, -1.0))
        return ranked[0] if ranked else "vote"

    def route(self, items: Sequence[Item], progress: bool = False) -> list[RoutingDecision]:
        """Which experts Symbolic-MoE recruits for each item, and why, without asking them:
        the keyword model runs, the experts do not."""
        return [d for d, _, _ in self.routed(items, progress)]

    def plan(self, items: Sequence[Item], strategy: str | None = None) -> list[RoutePlan]:
        """What `strategy` (default: the served one, `routing.strategy`) would do with each
        item, without asking any expert: whom it asks first, and why."""
        name = strategy or self.config.routing.strategy
        strat = get_strategy(name)
        experts, _ = self.monitor.plan() if self.monitor else (self.experts, {})
        plans = strat.plan(StrategyContext(self, experts), items)
        return [
            RoutePlan(
                item_id=it.id,
                strategy=name,
                keywords=p.keywords,
                experts=list(p.experts),
                explanation=p.explanation,
                routing=p.routing,
            )
            for it, p in zip(items, plans, strict=True)
        ]

    def lanes(self, items: Sequence[Item]) -> list[str]:
        """Per item, the experts the served strategy would ask first (comma-joined), where
        knowing costs no model call: 'conclave' reading skills from the question index
        (embeddings and the profile only). Otherwise '' for every item, one lane: planning
        would ask the keyword model, twice per question. The gateway batches routed
        questions by lane, so the questions of a slow expert (or of the one a dead
        expert's questions failed over to) never wait for a batch of theirs."""
        if self.config.routing.strategy != "conclave" or self.skills_source() != "embedding":
            return ["" for _ in items]
        # a question failed over from a dead expert has a lane of its own: its load on
        # the next best expert does not queue that expert's own questions behind it
        return [
            ",".join(p.experts) + "".join(f" for {d}" for d in p.explanation.down)
            if p.explanation is not None
            else ",".join(p.experts)
            for p in self.plan(items)
        ]

    def routed(
        self, items: Sequence[Item], progress: bool, experts: Sequence[str] | None = None
    ) -> list[tuple[RoutingDecision, int, Usage]]:
        """(routing decision, keyword calls, keyword usage) per item, over `experts`."""
        router = self.router(experts)
        return [
            (router.select(it.route_key or it.id, skills, keywords=words), calls, usage)
            for it, (words, skills, calls, usage) in zip(
                items, self.skills_of(items, progress), strict=True
            )
        ]

    def skills_source(self) -> Literal["keywords", "embedding"]:
        """Where 'conclave' reads skills now: `routing.skills`, or under 'auto' the source
        profiling chose (`RoutingState.skills_source`); the keyword model without a
        question index to read neighbours from."""
        chosen = self.config.routing.skills
        if chosen == "auto":
            chosen = self.state.skills_source if self.state is not None else "keywords"
        if chosen == "embedding" and (self.questions is None or not len(self.questions)):
            return "keywords"
        return chosen

    def skills_of(
        self, items: Sequence[Item], progress: bool = False, source: str = "keywords"
    ) -> list[tuple[list[str], list[str], int, Usage]]:
        """(keywords, inventory skills, keyword calls, keyword usage) per item: from the
        keyword model in one batch (new keywords embedded in one more), or with `source`
        'embedding' from the keywords of the item's nearest validation questions, with no
        LLM call (`routing.skills`)."""
        if source == "embedding" and self.questions is not None and len(self.questions):
            return [(words, list(words), 0, Usage()) for words in self.reader.skills_near(items)]
        kws = self.keywords(items, progress)
        if self.inventory is not None:
            self.inventory.map(sorted({k for words, _, _ in kws.values() for k in words}))
        out = []
        for it in items:
            words, calls, usage = kws[it.id]
            skills = self.inventory.map(words) if self.inventory is not None else []
            out.append((words, skills, calls, usage))
        return out

    def answer(
        self,
        items: Sequence[Item],
        strategy: str = "symbolic-moe",
        expert: str | None = None,
        progress: bool = False,
        on_done: Callable[[int, Trace], None] | None = None,
    ) -> list[Trace]:
        """Answer `items` with a registered strategy (plan -> ask -> combine); `expert`
        names the model for 'single'.

        `on_done(i, trace)` hears item i's trace as soon as it is final. Where combining
        costs no model call (a vote), an item its strategy stops escalating is final at
        that stage, while the batch's other items go on asking: a question one expert
        answered does not wait for its neighbours' later stages (the gateway answers its
        caller then). Otherwise every item is final after the last stage."""
        strat = get_strategy(strategy)
        # one snapshot of who serves and who shadows whom: a swap decided while this batch
        # runs applies from the next batch on
        experts, shadows = self.monitor.plan() if self.monitor else (self.experts, {})
        ctx = StrategyContext(self, experts, expert, progress)
        plans = strat.plan(ctx, items)
        traces = [new_trace(it, strategy, plan) for it, plan in zip(items, plans, strict=True)]
        draws = [self._draws(plan.experts) for plan in plans]
        pairs = [(it, ex) for it, d in zip(items, draws, strict=True) for ex, _ in d]
        nums = [n for d in draws for _, n in d]
        watched = strat.monitored and self.monitor is not None
        firsts = [(it, ex) for (it, ex), n in zip(pairs, nums, strict=True) if n == 0]
        probes = []
        if watched and self.state is not None and self.monitor is not None:
            # a suspect is probed on every request, asked or not, and so is an agent on
            # probation: asked its trial questions (right or wrong in validation), which
            # its challenger shadows, a fair contest (`state.trials`) decided in as few
            # requests as a suspect's alarm
            watch = [*self.monitor.suspects(), *shadows]
            probes = self.probes.draw(
                firsts,
                self.state.probes,
                watch,
                len(items),
                trials=self.state.trials,
                on_trial=shadows,
                serving=experts,
            )
        asked = [(it, ex) for it, ex, _ in probes]
        # probation: a challenger answers what its incumbent answers, in the same batch
        shadow = [(it, shadows[ex]) for it, ex in firsts + asked if watched and ex in shadows]
        extra = [0] * (len(asked) + len(shadow))
        answered = self.ask(
            pairs + asked + shadow, progress, samples=nums + extra, stream=True, routed=True
        )
        got = iter(answered[: len(pairs)])
        probed = answered[len(pairs) : len(pairs) + len(probes)]
        probe_traces = [
            probe_trace(it, kw, a) for (it, _, kw), a in zip(probes, probed, strict=True)
        ]
        by_id = {tr.id: tr for tr in traces + probe_traces}
        for (it, _), a in zip(shadow, answered[len(pairs) + len(probes) :], strict=True):
            by_id[it.id].shadow.append(a)
        per_item = [[next(got) for _ in d] for d in draws]
        combiner = self._aggregator(strat.combiner(ctx))
        incumbent = {ch: inc for inc, ch in shadows.items()}
        done: set[int] = set()

        def finish(idx: Iterable[int]) -> None:
            """Items final now: combined, kept for feedback and scored before their callers
            hear of them (feedback may come straight back)."""
            group = [i for i in idx if i not in done]
            if not group:
                return
            done.update(group)
            for i in group:
                tr, ans = traces[i], per_item[i]
                weigh(ans, plans[i], self)
                tr.answers = ans
                tr.calls += len(ans)
                tr.tokens += sum(a.tokens for a in ans)
                tr.completion_tokens += sum(a.completion_tokens for a in ans)
                tr.explanation = plans[i].explanation
            its, trs = [items[i] for i in group], [traces[i] for i in group]
            self._combine(combiner, its, trs, [per_item[i] for i in group], progress)
            self.recent.record(its, trs)
            if watched:
                self._score(trs, incumbent)
            if on_done is not None:
                for i in group:
                    on_done(i, traces[i])

        free = combiner is None or combiner[1].llm_calls == 0
        self._escalate(strat, ctx, items, plans, per_item, finish if free and on_done else None)
        finish(range(len(items)))
        if watched and probe_traces:
            self._score(probe_traces, incumbent)
        return traces

    def _score(self, traces: list[Trace], incumbent: dict[str, str]) -> None:
        """The monitor's rewards for `traces` and their challengers' shadow answers
        (`incumbent`: challenger -> the incumbent it shadows)."""
        assert self.monitor is not None
        self.monitor.observe(
            traces,
            {tr.id: [(incumbent[a.expert], a) for a in tr.shadow] for tr in traces},
            {tr.id: self.expected(tr) for tr in traces},
        )

    def _draws(self, drawn: Sequence[str]) -> list[tuple[str, int]]:
        """(expert, draw number) to ask for a plan's draws: an expert that samples is asked
        once per draw; a greedy one once, since its second answer would be its first."""
        out: list[tuple[str, int]] = []
        for ex in dict.fromkeys(drawn):
            n = drawn.count(ex) if self.samples(ex) else 1
            out.extend((ex, i) for i in range(n))
        return out

    def _escalate(
        self,
        strat: Strategy,
        ctx: StrategyContext,
        items: Sequence[Item],
        plans: list[Plan],
        per_item: list[list[ExpertAnswer]],
        finish: Callable[[Iterable[int]], None] | None = None,
    ) -> None:
        """Later stages of a strategy that asks more where its first answers leave doubt:
        each stage is one more pool batch, for the items that need it. An item given no
        expert is done (`Strategy.escalate`): `finish` hears it before the next stage."""
        escalate = getattr(strat, "escalate", None)
        over: set[int] = set()
        for _ in range(MAX_STAGES):
            more = escalate(ctx, items, plans, per_item) if escalate is not None else []
            more = [[] if i in over else m for i, m in enumerate(more)]
            over.update(i for i in range(len(items)) if i >= len(more) or not more[i])
            if finish is not None:
                finish(sorted(over))
            todo = [(i, ex) for i, exs in enumerate(more) for ex in exs]
            if not todo:
                return
            got = self.ask([(items[i], ex) for i, ex in todo], ctx.progress, routed=True)
            for (i, ex), a in zip(todo, got, strict=True):
                plans[i].experts.append(ex)
                per_item[i].append(a)

    def _aggregator(self, aggregator: str | Aggregator | None) -> tuple[str, Aggregator] | None:
        """A strategy's combiner (a name, or an aggregator it made) as (name, aggregator);
        None: take the one expert's answer as it is."""
        if aggregator is None:
            return None
        if isinstance(aggregator, str):
            from agents.aggregators import get_aggregator

            return aggregator, get_aggregator(aggregator, self.with_role(Role.AGGREGATOR))
        return getattr(aggregator, "expert", type(aggregator).__name__), aggregator

    def _combine(
        self,
        aggregator: tuple[str, Aggregator] | None,
        items: Sequence[Item],
        traces: list[Trace],
        per_item: list[list[ExpertAnswer]],
        progress: bool,
    ) -> None:
        """Each trace's final choice: the one expert's answer, or the aggregator's."""
        if aggregator is None:
            for tr in traces:
                tr.choice = tr.answers[0].choice
        else:
            name, agg = aggregator
            outs = agg.combine(items, per_item, self._aggregation_context(progress))
            for tr, out in zip(traces, outs, strict=True):
                tr.aggregator, tr.aggregator_text = name, out.text
                tr.fell_back_to_vote, tr.choice = out.fell_back, out.choice
                tr.calls += agg.llm_calls if out.calls is None else out.calls
                tr.tokens += out.usage.total
                tr.completion_tokens += out.usage.completion
        for tr in traces:
            if tr.gold is not None:
                tr.correct = tr.choice == tr.gold

    # ---- learning -----------------------------------------------------------------------

    def feedback(self, task: str, correct: bool, gold: str | None = None) -> int:
        """A user graded the final answer to question `task` (and may have given the right
        answer, `gold`): the routing estimates and the monitor's rewards learn from it
        (`orchestrator.learning.feedback`). Returns how many answers were graded."""
        from orchestrator.learning import feedback

        return feedback(self, task, correct, gold)

    def learn(self, items: Sequence[Item], traces: Sequence[Trace]) -> int:
        """Learn from answered questions that have a gold answer
        (`orchestrator.learning.learn`). Returns how many answers it learnt from."""
        from orchestrator.learning import learn

        return learn(self, items, traces)

    def chat(
        self,
        items: Sequence[Item],
        on_done: Callable[[int, ChatAnswer | Exception], None] | None = None,
    ) -> list[ChatAnswer | Exception]:
        """The routed ensemble's chat answers (what the gateway's 'conclave' model
        returns): the served strategy's traces turned into answer text, choice and usage;
        `on_done(i, answer)` hears each as soon as it is final."""
        from orchestrator.chat import chat_answers

        return chat_answers(self, items, on_done)

    # ---- persistence --------------------------------------------------------------------

    def save_state(self, folder: Path) -> None:
        """Write the routing state to `folder` (`orchestrator.profiling.save_state`)."""
        from orchestrator.profiling import save_state

        save_state(self, folder)

    def load_state(self, folder: Path) -> None:
        """Read the routing state from `folder` (`orchestrator.profiling.load_state`)."""
        from orchestrator.profiling import load_state

        load_state(self, folder)
