"""The facade every front end uses (CLI, SDK, gateway): profile a pool, answer questions.

    with Conclave(config) as c:
        state = c.profile(validation_rows, dataset="skillmix")   # keywords, profiles, aggregator
        traces = c.answer(test_rows, strategy="symbolic-moe")

Every strategy runs as batched stages through the pool, so a model is loaded once per
stage: keywords (Symbolic-MoE only), experts, aggregator (when the strategy has one).
Each answer comes back as a `Trace`: keywords, mapped skills, the routing decision, every
expert's answer, the aggregator's, the final choice, calls and tokens.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path

from orchestrator.config import ConclaveConfig, Role
from orchestrator.errors import ConfigError
from orchestrator.router import SkillRouter
from orchestrator.types import (
    ExpertAnswer,
    Item,
    Probe,
    RoutingDecision,
    RoutingState,
    Trace,
    Usage,
)

STRATEGIES = ("single", "best-single", "random-k", "majority", "moa", "symbolic-moe")


class Conclave:
    """A pool of experts plus the routing state learnt by `profile`."""

    def __init__(  # type: ignore[no-untyped-def]
        self, config: ConclaveConfig, pool=None, embedder=None, reuse_answers: bool = False
    ) -> None:
        self.config = config
        #: reuse greedy experts' answers to questions they already answered (evals)
        self.reuse_answers = reuse_answers
        self._answers: dict[tuple[str, str, str], ExpertAnswer] = {}
        self._pool = pool
        self._embedder = embedder
        self.profiles = None
        self.inventory = None
        self.state: RoutingState | None = None
        self.monitor = None
        self._probe_credit: dict[str, float] = {}  # probes owed per serving expert
        self._probe_order: dict[str, list[int]] = {}  # each expert's probe cycle
        self.probes_asked = 0  # probe questions asked so far
        self._probe_lock = threading.Lock()
        if config.free_agents.active:
            from agents.free_agents import AuditLog, FreeAgentMonitor

            self.monitor = FreeAgentMonitor(
                config.free_agents, self.experts, AuditLog(config.audit_log_path())
            )

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def pool(self):  # type: ignore[no-untyped-def]
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
        return [e.name for e in self.config.pool.experts if Role.EXPERT in e.roles]

    @property
    def serving(self) -> list[str]:
        """The experts that answer users now: all but the free agents waiting."""
        return self.monitor.plan()[0] if self.monitor is not None else self.experts

    def _with_role(self, role: Role) -> list[str]:
        return [e.name for e in self.config.pool.experts if role in e.roles]

    def _embedder_or_default(self):  # type: ignore[no-untyped-def]
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

        name = self.config.routing.keyword_expert or next(
            iter(self._with_role(Role.KEYWORDS)), None
        )
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

    def ask(self, pairs: Sequence[tuple[Item, str]], progress: bool = False) -> list[ExpertAnswer]:
        """Each (item, expert) answered once, all in one pool batch. With `reuse_answers`,
        a greedy expert's answer to a question it already answered is reused (marked
        `cached`): the same prompt to the same greedy model gives the same text."""
        from orchestrator.answers import extract_answer
        from orchestrator.prompts import messages_for
        from workers.batch import GenerationRequest

        keys = [(ex, it.answer_type, it.question) for it, ex in pairs]
        todo = [
            i
            for i, key in enumerate(keys)
            if key not in self._answers or not self._deterministic(key[0])
        ]
        reqs = [
            GenerationRequest(
                item_id=f"{pairs[i][0].id}|{pairs[i][1]}",
                expert=pairs[i][1],
                messages=messages_for(pairs[i][0].question, pairs[i][0].answer_type),
            )
            for i in todo
        ]
        fresh = {}
        for i, r in zip(todo, self.pool.run(reqs, progress=progress), strict=True):
            it, ex = pairs[i]
            fresh[i] = ExpertAnswer(
                expert=ex,
                text=r.text,
                choice=extract_answer(r.text, it.question, it.answer_type) if r.ok else None,
                error=None if r.ok else r.error.message if r.error else "failed",
                error_type=r.error.type if r.error else None,
                tokens=r.prompt_tokens + r.completion_tokens,
                completion_tokens=r.completion_tokens,
            )
            if r.ok and self.reuse_answers and self._deterministic(ex):
                self._answers[keys[i]] = fresh[i]
        return [
            fresh[i] if i in fresh else self._answers[key].model_copy(update={"cached": True})
            for i, key in enumerate(keys)
        ]

    def _deterministic(self, expert: str) -> bool:
        if not self.reuse_answers:
            return False
        try:
            return self.config.pool.expert(expert).sampling.temperature == 0.0
        except KeyError:  # unknown: the pool answers it with an error result
            return False

    def aggregate(
        self,
        items: Sequence[Item],
        answers: Sequence[list[ExpertAnswer]],
        aggregator: str,
        progress: bool = False,
    ) -> list[tuple[str | None, str | None, bool, Usage]]:
        """(choice, aggregator text, fell back to vote, usage) per item."""
        from agents.aggregate import synthesis_messages, weighted_vote
        from orchestrator.answers import extract_answer
        from workers.batch import GenerationRequest

        votes = [
            weighted_vote(
                it.question, [a.text for a in ans], [a.weight for a in ans], it.answer_type
            )
            for it, ans in zip(items, answers, strict=True)
        ]
        if aggregator == "vote":
            return [(v, None, False, Usage()) for v in votes]
        reqs = [
            GenerationRequest(
                item_id=it.id,
                expert=aggregator,
                messages=synthesis_messages(
                    it.question, [a.text or "" for a in ans], it.answer_type
                ),
            )
            for it, ans in zip(items, answers, strict=True)
        ]
        out = []
        for it, v, r in zip(items, votes, self.pool.run(reqs, progress=progress), strict=True):
            choice = extract_answer(r.text, it.question, it.answer_type) if r.ok else None
            usage = Usage(r.prompt_tokens, r.completion_tokens)
            out.append((choice or v, r.text, choice is None, usage))
        return out

    # ---- profiling ----------------------------------------------------------------------

    def profile(
        self,
        items: Sequence[Item],
        dataset: str,
        split: str = "validation",
        progress: bool = False,
    ) -> RoutingState:
        """Keywords for every item, every expert on every item, profiles (+1/-1 per keyword),
        the skill inventory, and the aggregator chosen on the aggregation benchmark."""
        from skills.inventory import SkillInventory
        from skills.profiles import ProfileSet

        if any(i.gold_answer is None for i in items):
            raise ConfigError("profiling needs graded items: every item must have gold_answer")
        kws = self.keywords(items, progress)
        experts = self.experts
        answers = self.ask([(it, ex) for it in items for ex in experts], progress)
        per_item = [answers[i * len(experts) : (i + 1) * len(experts)] for i in range(len(items))]
        graded = [
            (a.expert, kws[it.id][0], a.choice == it.gold_answer)
            for it, ans in zip(items, per_item, strict=True)
            for a in ans
        ]
        self.profiles = ProfileSet().update(graded, dataset=dataset, split=split)
        self.inventory = SkillInventory.build(
            (k for it in items for k in kws[it.id][0]), self._embedder_or_default()
        )
        acc = {
            ex: round(
                100
                * sum(a.choice == it.gold_answer for it, a in zip(items, col, strict=True))
                / len(items),
                2,
            )
            for ex, col in zip(experts, zip(*per_item, strict=True), strict=True)
        }
        best = max(experts, key=lambda e: acc[e])
        scores = self._aggregation_benchmark(items, per_item, progress)
        choice = self.config.routing.aggregator
        if choice == "auto":
            choice = max(scores, key=lambda c: (scores[c], c == "vote"))
        elif choice != "vote" and choice not in self._with_role(Role.AGGREGATOR):
            raise ConfigError(
                f"routing.aggregator {choice!r} is not an expert with role 'aggregator'; "
                f"choose 'auto', 'vote' or one of {self._with_role(Role.AGGREGATOR)}"
            )
        self.state = RoutingState(
            dataset=dataset,
            experts=experts,
            best_single=best,
            accuracy=acc,
            aggregator=choice,
            aggregator_scores=scores,
        )
        probes: dict[str, list[Probe]] = {}
        router = self.router()
        for it in items:
            words = kws[it.id][0]
            for ex in router.select(it.id, self.inventory.map(words), keywords=words).chosen:
                probes.setdefault(ex, []).append(Probe(item=it, keywords=words))
        self.state.probes = probes
        if self.monitor is not None:  # picks the free agent with the best validation record
            self.monitor.record = dict(acc)
        return self.state

    def _aggregation_benchmark(
        self, items: Sequence[Item], per_item: Sequence[list[ExpertAnswer]], progress: bool
    ) -> dict[str, float]:
        """Per question with at least one right and two wrong answers: one right and two
        wrong, shuffled; every aggregator candidate (and the vote) answers; accuracy."""
        rng = random.Random(0)
        bench_items, bench_answers = [], []
        for it, ans in zip(items, per_item, strict=True):
            right = [a for a in ans if a.choice == it.gold_answer]
            wrong = [a for a in ans if a.choice is not None and a.choice != it.gold_answer]
            if right and len(wrong) >= 2:
                picked = [rng.choice(right), *rng.sample(wrong, 2)]
                rng.shuffle(picked)
                bench_items.append(it)
                bench_answers.append(picked)
        if not bench_items:
            return {"vote": 0.0}
        scores = {}
        for cand in ["vote", *self._with_role(Role.AGGREGATOR)]:
            outs = self.aggregate(bench_items, bench_answers, cand, progress)
            scores[cand] = round(
                100
                * sum(o[0] == it.gold_answer for o, it in zip(outs, bench_items, strict=True))
                / len(bench_items),
                2,
            )
        return scores

    # ---- answering ----------------------------------------------------------------------

    def router(self, experts: Sequence[str] | None = None) -> SkillRouter:
        """The router over `experts` (default: those serving now). A free agent promoted
        without a validation profile is routed by the profile its probation built."""
        from skills.profiles import ModelProfile

        if self.profiles is None:
            raise ConfigError("no profiles yet: run `profile` (or load saved ones) first")
        experts = list(experts if experts is not None else self.serving)
        skills = {
            e: self.profiles.profiles[e].skills for e in experts if e in self.profiles.profiles
        }
        if self.monitor is not None:
            for e in experts:
                if e not in skills and e in self.monitor.promoted_profiles:
                    prof = ModelProfile(expert=e)
                    for keywords, correct in self.monitor.promoted_profiles[e]:
                        prof.add(keywords, correct)
                    skills[e] = prof.skills
        return SkillRouter(skills or {e: {} for e in experts}, self.config.routing.router)

    def _llm_aggregator(self) -> str:
        """Mixture-of-Agents synthesises with an LLM: the chosen aggregator, or, when the
        vote was chosen, the best-scoring LLM candidate (else the first one)."""
        llms = self._with_role(Role.AGGREGATOR)
        if self.state is not None and self.state.aggregator in llms:
            return self.state.aggregator
        scores = self.state.aggregator_scores if self.state else {}
        ranked = sorted(llms, key=lambda a: -scores.get(a, -1.0))
        return ranked[0] if ranked else "vote"

    def route(self, items: Sequence[Item], progress: bool = False) -> list[RoutingDecision]:
        """Which experts Symbolic-MoE recruits for each item, and why, without asking them:
        the keyword model runs, the experts do not."""
        return [d for d, _, _ in self._route(items, progress)]

    def _route(
        self, items: Sequence[Item], progress: bool, experts: Sequence[str] | None = None
    ) -> list[tuple[RoutingDecision, int, Usage]]:
        router = self.router(experts)
        kws = self.keywords(items, progress)
        if self.inventory is not None:  # new keywords embedded in one batch
            self.inventory.map(sorted({k for words, _, _ in kws.values() for k in words}))
        out = []
        for it in items:
            words, calls, usage = kws[it.id]
            skills = self.inventory.map(words) if self.inventory is not None else []
            out.append((router.select(it.id, skills, keywords=words), calls, usage))
        return out

    def answer(
        self,
        items: Sequence[Item],
        strategy: str = "symbolic-moe",
        expert: str | None = None,
        progress: bool = False,
    ) -> list[Trace]:
        """Answer `items` with one strategy; see STRATEGIES. `expert` names the model for
        'single'."""
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        # one snapshot of who serves and who shadows whom: a swap decided while this batch
        # runs applies from the next batch on
        experts, shadows = self.monitor.plan() if self.monitor else (self.experts, {})
        k = self.config.routing.router.k
        traces = [Trace(id=it.id, strategy=strategy, gold=it.gold_answer) for it in items]
        plans: list[list[str]] = []
        if strategy == "single":
            if expert not in experts:
                raise ConfigError(f"strategy 'single' needs an expert: one of {experts}")
            plans = [[expert] for _ in items]
        elif strategy == "best-single":
            if self.state is None:
                raise ConfigError("'best-single' is chosen on validation: run `profile` first")
            plans = [[self.state.best_single] for _ in items]
        elif strategy == "random-k":
            seed = self.config.routing.router.seed  # per item: the same whatever the batch
            plans = [random.Random(f"{seed}|{it.id}").choices(experts, k=k) for it in items]
        elif strategy in ("majority", "moa"):
            plans = [list(experts) for _ in items]
        else:  # symbolic-moe
            for tr, (decision, calls, usage) in zip(
                traces, self._route(items, progress, experts), strict=True
            ):
                tr.keywords, tr.calls = decision.keywords, calls
                tr.tokens, tr.completion_tokens = usage.total, usage.completion
                tr.routing = decision
                plans.append(decision.chosen)
        pairs = [
            (it, ex) for it, plan in zip(items, plans, strict=True) for ex in dict.fromkeys(plan)
        ]
        watched = strategy == "symbolic-moe" and self.monitor is not None
        probes = self._probes(pairs) if watched else []
        asked = [(it, ex) for it, ex, _ in probes]
        # probation: a challenger answers what its incumbent answers, in the same batch
        shadow = [(it, shadows[ex]) for it, ex in pairs + asked if watched and ex in shadows]
        answered = self.ask(pairs + asked + shadow, progress)
        got = iter(answered[: len(pairs)])
        probe_traces = [
            Trace(
                id=it.id,
                strategy="probe",
                keywords=kw,
                gold=it.gold_answer,
                answers=[a],
                choice=a.choice,
                correct=a.choice == it.gold_answer,
                calls=1,
                tokens=a.tokens,
                completion_tokens=a.completion_tokens,
            )
            for (it, _, kw), a in zip(
                probes, answered[len(pairs) : len(pairs) + len(probes)], strict=True
            )
        ]
        by_id = {tr.id: tr for tr in traces + probe_traces}
        for (it, _), a in zip(shadow, answered[len(pairs) + len(probes) :], strict=True):
            by_id[it.id].shadow.append(a)
        per_item = []
        for tr, plan in zip(traces, plans, strict=True):
            counts = {ex: plan.count(ex) for ex in dict.fromkeys(plan)}
            ans = []
            for n in counts.values():
                a = next(got)
                a.weight = float(n)
                ans.append(a)
            tr.answers = ans
            tr.calls += len(ans)
            tr.tokens += sum(a.tokens for a in ans)
            tr.completion_tokens += sum(a.completion_tokens for a in ans)
            per_item.append(ans)
        aggregator = None
        if strategy in ("majority", "random-k"):
            aggregator = "vote"
        elif strategy == "symbolic-moe":
            aggregator = self.state.aggregator if self.state else "vote"
        elif strategy == "moa":
            aggregator = self._llm_aggregator()
        if aggregator is None:
            for tr in traces:
                tr.choice = tr.answers[0].choice
        else:
            outs = self.aggregate(items, per_item, aggregator, progress)
            for tr, (choice, text, fell, usage) in zip(traces, outs, strict=True):
                tr.aggregator, tr.aggregator_text, tr.fell_back_to_vote = aggregator, text, fell
                tr.choice = choice
                if aggregator != "vote":
                    tr.calls += 1
                    tr.tokens += usage.total
                    tr.completion_tokens += usage.completion
        for tr in traces:
            if tr.gold is not None:
                tr.correct = tr.choice == tr.gold
        if watched:
            incumbent = {ch: inc for inc, ch in shadows.items()}
            scored = traces + probe_traces
            self.monitor.observe(  # type: ignore[union-attr]
                scored, {tr.id: [(incumbent[a.expert], a) for a in tr.shadow] for tr in scored}
            )
        return traces

    def _probes(self, pairs: Sequence[tuple[Item, str]]) -> list[tuple[Item, str, list[str]]]:
        """(probe question, expert, its keywords) for this batch: `probes_per_task` per
        (task, serving expert), credit carried across batches, each expert's list cycled
        in a shuffled order (an expert promoted without a list gets every expert's)."""
        rate = self.config.free_agents.probes_per_task
        if rate == 0 or self.state is None or not self.state.probes:
            return []
        out = []
        with self._probe_lock:
            for ex in dict.fromkeys(ex for _, ex in pairs):
                owed = self._probe_credit.get(ex, 0.0) + rate * sum(e == ex for _, e in pairs)
                bank = self.state.probes.get(ex) or [
                    p for ps in self.state.probes.values() for p in ps
                ]
                while owed >= 1:
                    owed -= 1
                    if not self._probe_order.get(ex):
                        order = list(range(len(bank)))
                        random.Random(f"{ex}|{self.probes_asked}").shuffle(order)
                        self._probe_order[ex] = order
                    probe = bank[self._probe_order[ex].pop() % len(bank)]
                    self.probes_asked += 1
                    new_id = f"probe{self.probes_asked}:{probe.item.id}"
                    out.append((probe.item.model_copy(update={"id": new_id}), ex, probe.keywords))
                self._probe_credit[ex] = owed
        return out

    # ---- persistence --------------------------------------------------------------------

    def save_state(self, folder: Path) -> None:
        from orchestrator.files import atomic_write_text

        if self.profiles is None or self.inventory is None or self.state is None:
            raise ConfigError("nothing to save: run `profile` first")
        self.profiles.save(folder / "profiles.json")
        self.inventory.save(folder / "inventory")
        atomic_write_text(folder / "routing.json", self.state.model_dump_json(indent=1))

    def load_state(self, folder: Path) -> None:
        from skills.inventory import SkillInventory
        from skills.profiles import ProfileSet

        self.profiles = ProfileSet.load(folder / "profiles.json")
        self.inventory = SkillInventory.load(folder / "inventory", self._embedder_or_default())
        try:
            self.state = RoutingState.model_validate_json((folder / "routing.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"routing state in {folder} is unreadable ({exc}); profile again"
            ) from exc
        if self.monitor is not None:
            self.monitor.record = dict(self.state.accuracy)
