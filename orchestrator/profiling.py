"""Profiling a pool, and the profile cache.

`profile` (what `Conclave.profile` runs): keywords for every validation item, every expert
on every item, profiles (+1/-1 per keyword), the skill inventory, the embedded questions
with each expert's outcome (`skills.neighbours`) and how far to trust them against the
keywords, each expert's accuracy, the aggregator chosen on the aggregation benchmark, and
the probes the router would send each expert.

The cache: a pool's routing state is learnt once per (experts, routing settings,
validation items) and reused by `eval`, `profile`, `route` and `serve`.

The key hashes the experts' configs (and their model files' names, sizes and times), the
routing settings and the validation items, so a repeat run reuses the profile and any
change profiles again. Folders are written atomically by `Conclave.save_state`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from orchestrator.config import ConclaveConfig, Role
from orchestrator.errors import ConfigError
from orchestrator.files import writable_dir
from orchestrator.questions import SKILL_NEIGHBOURS
from orchestrator.types import ExpertAnswer, Item, LostCalls, Probe, RoutingState

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave
    from skills.estimates import Calibration

#: bumped when profiling records more: a cached profile from before is built again
#: (2: per-keyword answer counts, for the 'conclave' strategy's estimates; 3: how often wrong
#: answers agree; 4: the embedded validation questions, the estimates' calibration and
#: conclave's aggregator check; 5: the scope and the validation questions' answer type;
#: 6: where conclave reads skills under `routing.skills: auto`; 7: the trial banks an
#: expert on probation is asked from; 8: banks no longer padded to 30 questions; 9: a prior
#: strength per expert, and `auto` takes an aggregator LLM only beyond chance)
PROFILE_FORMAT = 9


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_files(model: str) -> list[tuple[str, int, int]] | str:
    p = Path(model)
    if not p.is_dir():
        return model  # a hub id or remote name: its name is all we know
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir())]


#: routing settings that change how questions are answered, not what profiling learns:
#: changing one reuses the cached profile
SERVING_ONLY = {"strategy", "max_expert_calls", "skills", "fallback"}


def profile_key(config: ConclaveConfig, items: Sequence[Item], dataset: str) -> str:
    experts = [  # where an expert runs (its resources) does not change its answers
        {
            **e.model_dump(mode="json", exclude={"resources"}),
            "files": _model_files(getattr(e.backend, "model", "")),
            **_dtype_rule(e.backend),
        }
        for e in config.pool.experts
    ]
    rows = [(i.id, i.question, i.gold_answer, i.answer_type) for i in items]
    return _hash(
        {
            "experts": experts,
            "routing": config.routing.model_dump(mode="json", exclude=SERVING_ONLY),
            "dataset": dataset,
            "rows": rows,
            "format": PROFILE_FORMAT,
        }
    )


def _dtype_rule(backend: object) -> dict[str, bool]:
    """What decides the dtype of an engine whose config leaves it open: whether the CPU
    computes bf16 natively (`workers.dtype`). Answers in float32 and in bf16 differ a
    little, and a cache folder outlives the CPU it was made on (machines change family)."""
    from workers.dtype import cpu_native_bf16, dtype_open

    args = getattr(backend, "engine_args", None)
    if not isinstance(args, dict) or not dtype_open(args):
        return {}
    return {"native_bf16": cpu_native_bf16()}


def ensure_profile(
    conclave: Conclave,
    items: Sequence[Item],
    dataset: str,
    cache_dir: Path,
    progress: bool = False,
    on_event: Callable[[str], None] = lambda _: None,
) -> tuple[Path | None, bool]:
    """Load the cached profile for these experts and items, or profile and cache it.
    Returns the folder (None: profiled but not cached, as an expert lost more than
    `MAX_LOST_SHARE` of its calls to errors) and whether it was reused."""
    folder = cache_dir / "profiles" / profile_key(conclave.config, items, dataset)
    if (folder / "routing.json").exists():
        try:
            conclave.load_state(folder)
            on_event(f"profile reused from {folder}")
            return folder, True
        except ConfigError as e:  # corrupt cache: profile again
            on_event(f"cached profile unusable ({e}); profiling again")
    writable_dir(  # before the profiling's minutes, not after
        folder.parent,
        "cache folder",
        "set cache_dir in the config, or $CONCLAVE_CACHE, to a folder this user can write",
    )
    on_event(f"profiling {len(conclave.experts)} experts on {len(items)} validation questions")
    state = conclave.profile(items, dataset=dataset, progress=progress)
    failing = {ex: lost for ex, lost in state.lost.items() if lost.share > MAX_LOST_SHARE}
    if failing:  # not a measurement of them: the next run profiles again
        for ex, lost in failing.items():
            on_event(f"{ex} lost {lost}")
        one = len(failing) == 1
        its, it = ("its", "it") if one else ("their", "them")
        on_event(
            f"profile NOT cached: {', '.join(failing)} lost more than {MAX_LOST_SHARE:.0%} "
            f"of {its} profiling calls to errors, counted as wrong answers (so this run "
            f"seldom asks {it}); fix {it} (`conclave config validate`) and run again to "
            f"profile {it}"
        )
        return None, False
    conclave.save_state(folder)
    return folder, False


#: The share of its profiling calls an expert may lose to errors (as `conclave eval
#: --max-error-share`) for the profile to be cached: its errors count as wrong answers,
#: and a cached profile is reused until the pool or the questions change, so an expert
#: down while profiled (a provider outage, a missing model folder) was never asked again.
MAX_LOST_SHARE = 0.05


def profile(
    conclave: Conclave,
    items: Sequence[Item],
    dataset: str,
    split: str = "validation",
    progress: bool = False,
) -> RoutingState:
    """Learn the pool's routing state from graded `items`; sets the facade's profiles,
    inventory and state, and returns the state."""
    from agents.aggregators import get_aggregator
    from skills.inventory import SkillInventory
    from skills.profiles import ProfileSet

    if any(i.gold_answer is None for i in items):
        raise ConfigError("profiling needs graded items: every item must have gold_answer")
    kws = conclave.keywords(items, progress)
    experts = conclave.experts
    answers = conclave.ask([(it, ex) for it in items for ex in experts], progress)
    per_item = [answers[i * len(experts) : (i + 1) * len(experts)] for i in range(len(items))]
    graded = [
        (a.expert, kws[it.id][0], a.choice == it.gold_answer)
        for it, ans in zip(items, per_item, strict=True)
        for a in ans
    ]
    conclave.profiles = ProfileSet().update(graded, dataset=dataset, split=split)
    inventory = SkillInventory.build(
        (k for it in items for k in kws[it.id][0]), conclave.embedder()
    )
    conclave.inventory = inventory
    outcomes = {
        ex: [a.choice == it.gold_answer for it, a in zip(items, col, strict=True)]
        for ex, col in zip(experts, zip(*per_item, strict=True), strict=True)
    }
    cal, held, scope, source, skill_scores = index_questions(
        conclave, items, outcomes, [kws[it.id][0] for it in items]
    )
    acc = {ex: round(100 * sum(col) / len(items), 2) for ex, col in outcomes.items()}
    best = max(experts, key=lambda e: acc[e])
    right = aggregation_benchmark(conclave, items, per_item, progress)
    scores = {c: round(100 * sum(oks) / max(len(oks), 1), 2) for c, oks in right.items()}
    choice = conclave.config.routing.aggregator
    if choice == "auto":
        choice = choose_aggregator(right)
    else:  # fail here, before any answer, on a name that is neither kind
        get_aggregator(choice, conclave.with_role(Role.AGGREGATOR))
    state = RoutingState(
        dataset=dataset,
        experts=experts,
        best_single=best,
        accuracy=acc,
        aggregator=choice,
        aggregator_scores=scores,
        wrong_agreement=wrong_agreement(items, per_item),
        neighbour_weight=cal.blend,
        neighbours=cal.neighbours,
        prior_strength=cal.prior_strength,
        priors=cal.priors,
        calibration=cal.scores,
        scope=scope,
        skills_source=source,
        skills_scores=skill_scores,
        answer_type=Counter(it.answer_type for it in items).most_common(1)[0][0],
    )
    errors = {
        ex: [a.error for a in col if a.error]
        for ex, col in zip(experts, zip(*per_item, strict=True), strict=True)
    }
    state.lost = {
        ex: LostCalls(lost=len(errs), calls=len(items), first=errs[0].strip())
        for ex, errs in errors.items()
        if errs
    }
    conclave.state = state
    state.synthesis, state.synthesis_scores = choose_synthesis(
        conclave, items, per_item, held, progress
    )
    words = [kws[it.id][0] for it in items]
    state.probes = probe_banks(conclave, items, words, outcomes)
    state.trials = probe_banks(conclave, items, words, outcomes, trial=True)
    if conclave.monitor is not None:  # picks the free agent with the best validation record
        conclave.monitor.record = dict(acc)
    return state


#: The share of the validation questions in an expert's probe bank, and the fewest. Few:
#: padded to 30, a specialist on one subject of fourteen, right on 24 of its 25
#: validation questions there, had 6 right answers elsewhere in its bank, lucky ones a
#: fall on its subject leaves right, and each asked pulled its test back.
PROBE_SHARE, PROBE_MIN = 1 / 3, 10
#: Pseudo-answers at an expert's overall accuracy in each category's strength.
CATEGORY_PRIOR = 10


def probe_banks(
    conclave: Conclave,
    items: Sequence[Item],
    keywords: Sequence[list[str]],
    outcomes: dict[str, list[bool]],
    trial: bool = False,
) -> dict[str, list[Probe]]:
    """Each profiled expert's probes: validation questions it answered right, where it
    is strong (its validation accuracy in the question's category when the items have
    categories, else on the question's keywords as its profile predicts, at least halfway
    from its average to its best), at least `PROBE_MIN` and at most `PROBE_SHARE` of the
    questions, strongest first, kept in their order.

    Right ones, because a greedy expert answers a question it got right again (the
    monitor learns how often from its own record: `agents.swap_rules.own_level`), so a
    miss is strong evidence of a change; where it is strong, because a fall shows most
    where it is good and that is where the router relies on it. Chosen from its own
    record, not from the questions the profiling router sent it, so an expert the router
    seldom picked has probes too.

    With `trial`, its trial bank: the same choice among every question, right or wrong.
    While it is on probation it and its challenger are both asked those (`state.trials`):
    on its own right answers, which it repeats, it would beat any challenger. In a pool
    whose specialist on one subject held only a third of its 30 probes there (the rest its
    lucky right answers elsewhere), a challenger as good as it was shadowed it through
    200 tasks after its fall from 0.65 to 0.23 with no verdict (difference -0.05)."""
    from skills.estimates import estimate

    if conclave.profiles is None or conclave.state is None:
        return {}
    state = conclave.state
    keep = max(min(PROBE_MIN, len(items)), round(PROBE_SHARE * len(items)))
    banks: dict[str, list[Probe]] = {}
    for ex, right in outcomes.items():
        profile = conclave.profiles.profiles.get(ex)
        overall = sum(right) / max(len(right), 1)
        if all(it.category for it in items):
            by_cat: dict[str, list[bool]] = {}
            for it, ok in zip(items, right, strict=True):
                by_cat.setdefault(str(it.category), []).append(ok)
            # shrunk toward its overall accuracy: the categories it looks best in are
            # partly the ones it was lucky in, and the monitor's bar starts here
            shrunk = {
                c: (sum(oks) + CATEGORY_PRIOR * overall) / (len(oks) + CATEGORY_PRIOR)
                for c, oks in by_cat.items()
            }
            strength = [shrunk[str(it.category)] for it in items]
        else:
            prior = state.prior_of(ex)
            strength = [estimate(ex, profile, words, prior).accuracy for words in keywords]
        ranked = sorted(
            (i for i in range(len(items)) if trial or right[i]), key=lambda i: -strength[i]
        )
        # where it is strong: halfway from its average to its best, or the best PROBE_MIN
        bar = (overall + max(strength, default=0.0)) / 2
        strong = [i for i in ranked if strength[i] >= bar]
        chosen = ranked[: min(max(len(strong), PROBE_MIN), keep)]
        banks[ex] = [
            Probe(item=items[i], keywords=list(keywords[i]), strength=strength[i])
            for i in sorted(chosen)
        ]
    return banks


def index_questions(
    conclave: Conclave,
    items: Sequence[Item],
    outcomes: dict[str, list[bool]],
    skills: Sequence[Sequence[str]],
) -> Indexed:
    """Embed the validation questions with each expert's outcome (the facade's
    `questions`), and choose how 'conclave' estimates (the neighbours' weight against
    the keywords, their number, the prior strength) and where it gets a question's skills
    (`choose_skills`)."""
    from skills.estimates import NEIGHBOURS, PRIOR_STRENGTHS, Calibration, calibrate, held_out
    from skills.neighbours import RIGHT, WRONG, QuestionIndex

    embedder = conclave.embedder()
    vectors = embedder.encode([it.question for it in items])
    index = QuestionIndex(
        [it.id for it in items],
        vectors,
        {e: [RIGHT if ok else WRONG for ok in col] for e, col in outcomes.items()},
        embedder.name,
        keywords=skills,
    )
    conclave.questions = index
    fixed = conclave.config.routing.prior_strength
    priors = (fixed,) if fixed is not None else PRIOR_STRENGTHS
    if conclave.profiles is None or len(items) < 2:
        cal = Calibration(0.0, min(NEIGHBOURS), priors[0], {})
        return Indexed(cal, [{} for _ in items], -1.0, "keywords", {})
    sims = index.similarities(vectors)
    others = sims.copy()
    np.fill_diagonal(others, -np.inf)
    scope = round(float(np.percentile(others.max(axis=1), SCOPE_PERCENTILE)), 4)
    own = list(range(len(items)))
    near = {k: index.evidence(sims, list(outcomes), k, exclude=own) for k in NEIGHBOURS}
    profiles = conclave.profiles.profiles
    cal = calibrate(profiles, skills, outcomes, near, priors)
    strengths = {e: cal.prior_of(e) for e in outcomes}
    held = held_out(profiles, skills, outcomes, near[cal.neighbours], strengths, cal.blend)
    # the fast path's skills for each validation question: its neighbours' keywords, itself
    # left out, estimated under the same calibration
    near_skills = index.skills_near(sims, SKILL_NEIGHBOURS, exclude=own)
    fast = held_out(
        profiles,
        near_skills,
        outcomes,
        near[cal.neighbours],
        strengths,
        cal.blend,
        own=skills,
    )
    source, scores = choose_skills(held, fast, outcomes)
    return Indexed(cal, held, scope, source, scores)


class Indexed(NamedTuple):
    """What `index_questions` chose."""

    calibration: Calibration
    held: list[dict[str, float]]  # each validation question's held-out estimates
    scope: float  # `RoutingState.scope`
    skills_source: Literal["keywords", "embedding"]
    skills_scores: dict[str, float]


#: the embedding path may route this many points (of validation accuracy of the expert
#: ranked first) below the keyword model and still be chosen: it saves the keyword calls
SKILLS_TOLERANCE = 1.0
#: validation questions needed to judge the embedding path at all (fewer: keywords)
MIN_SKILL_QUESTIONS = 20


def choose_skills(
    keyword_estimates: Sequence[dict[str, float]],
    embedding_estimates: Sequence[dict[str, float]],
    outcomes: dict[str, list[bool]],
) -> tuple[Literal["keywords", "embedding"], dict[str, float]]:
    """Where 'conclave' gets a question's skills under `routing.skills: auto`: from the
    embedding (its nearest validation questions' keywords, no LLM call) unless, leaving
    each validation question out in turn, the expert ranked first with those skills is
    right more than `SKILLS_TOLERANCE` points less often than with the keyword model's,
    or there are too few validation questions to tell (`MIN_SKILL_QUESTIONS`). Returns
    the source and each source's score (%)."""
    from skills.estimates import routing_accuracy

    scores = {
        "keywords": round(routing_accuracy(keyword_estimates, outcomes), 2),
        "embedding": round(routing_accuracy(embedding_estimates, outcomes), 2),
    }
    fast = (
        len(keyword_estimates) >= MIN_SKILL_QUESTIONS
        and scores["embedding"] >= scores["keywords"] - SKILLS_TOLERANCE
    )
    return ("embedding" if fast else "keywords"), scores


#: a question less like the validation questions than this percentile of them are like
#: each other is out of scope (0: than the least typical of them)
SCOPE_PERCENTILE = 0


#: split validation questions needed before an aggregator LLM may be chosen for 'conclave'
MIN_SPLIT_QUESTIONS = 20


def choose_synthesis(
    conclave: Conclave,
    items: Sequence[Item],
    per_item: Sequence[list[ExpertAnswer]],
    held: Sequence[dict[str, float]],
    progress: bool = False,
) -> tuple[str | None, dict[str, float]]:
    """Whether 'conclave' should hand split answers to an aggregator LLM, judged end to
    end: on the validation questions where the three experts it would rank first (by
    held-out estimates) name more than one option, each aggregator LLM and the weighted
    vote combine those answers. The best on the even-numbered questions is chosen and
    must beat the vote again on the odd-numbered ones. Returns (the LLM or None, the
    accuracies, '<candidate>/choose' and '<candidate>/confirm')."""
    from skills.sequential import effective_options, options_in, weight

    llms = conclave.with_role(Role.AGGREGATOR)
    agreement = conclave.state.wrong_agreement if conclave.state is not None else 0.0
    split_items: list[Item] = []
    split_answers: list[list[ExpertAnswer]] = []
    for it, ans, est in zip(items, per_item, held, strict=True):
        team = sorted(est, key=lambda e: (-est[e], e))[:3]
        asked = [a for a in ans if a.expert in team]
        if len({a.choice for a in asked if a.choice is not None}) > 1:
            k = effective_options(options_in(it), agreement)
            split_items.append(it)
            split_answers.append(
                [a.model_copy(update={"weight": weight(est[a.expert], k)}) for a in asked]
            )
    if not llms or len(split_items) < MIN_SPLIT_QUESTIONS:
        return None, {"split questions": float(len(split_items))}
    halves = {"choose": range(0, len(split_items), 2), "confirm": range(1, len(split_items), 2)}
    scores: dict[str, float] = {"split questions": float(len(split_items))}
    for cand in ["vote", *llms]:
        outs = conclave.aggregate(split_items, split_answers, cand, progress)
        for half, rows in halves.items():
            right = sum(outs[i].choice == split_items[i].gold_answer for i in rows)
            scores[f"{cand}/{half}"] = round(100 * right / len(rows), 2)
    best = max(llms, key=lambda c: (scores[f"{c}/choose"], c))
    wins = all(scores[f"{best}/{h}"] > scores[f"vote/{h}"] for h in halves)
    return (best if wins else None), scores


def wrong_agreement(items: Sequence[Item], per_item: Sequence[list[ExpertAnswer]]) -> float:
    """The share of pairs of wrong answers to one question that are the same answer."""
    agree = pairs = 0
    for it, ans in zip(items, per_item, strict=True):
        wrong = [a.choice for a in ans if a.choice is not None and a.choice != it.gold_answer]
        for i, x in enumerate(wrong):
            for y in wrong[i + 1 :]:
                pairs += 1
                agree += x == y
    return round(agree / pairs, 4) if pairs else 0.0


def aggregation_benchmark(
    conclave: Conclave,
    items: Sequence[Item],
    per_item: Sequence[list[ExpertAnswer]],
    progress: bool,
) -> dict[str, list[bool]]:
    """Per question with at least one right and two wrong answers: one right and two
    wrong, shuffled; every aggregator candidate (the vote and each aggregator expert)
    answers; whether each candidate's answer was right, per question."""
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
        return {"vote": []}
    return {
        cand: [
            o.choice == it.gold_answer
            for o, it in zip(
                conclave.aggregate(bench_items, bench_answers, cand, progress),
                bench_items,
                strict=True,
            )
        ]
        for cand in ["vote", *conclave.with_role(Role.AGGREGATOR)]
    }


#: `routing.aggregator: auto` keeps the vote unless an aggregator LLM beats it on the
#: aggregation benchmark by more than chance: a one-sided sign test, at this level, on
#: the questions where one of the two is right and the other wrong. On the zoo (an Intel
#: Xeon model 106, 2026-12-01) SmolLM2 scored 17.65% there to the vote's 14.71%, one
#: question of 34, and as Symbolic-MoE's aggregator took it to 31.2% end to end (92.5-93.8%
#: on the days `auto` had chosen the vote). Picking the best of several LLMs first makes
#: the test a little lenient; pools have one or two.
AGGREGATOR_LEVEL = 0.05


def choose_aggregator(right: dict[str, list[bool]]) -> str:
    """The aggregator `auto` picks from the aggregation benchmark's outcomes: the best
    LLM candidate if it beats the vote beyond chance (`AGGREGATOR_LEVEL`), else the vote."""
    llms = [c for c in right if c != "vote"]
    if not llms:
        return "vote"
    best = max(llms, key=lambda c: sum(right[c]))  # ties: the first listed
    vote = right.get("vote", [False] * len(right[best]))
    wins = sum(a and not v for a, v in zip(right[best], vote, strict=True))
    losses = sum(v and not a for a, v in zip(right[best], vote, strict=True))
    n = wins + losses
    p = sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n  # P(>= wins | no better)
    return best if wins > losses and p < AGGREGATOR_LEVEL else "vote"


def save_state(conclave: Conclave, folder: Path) -> None:
    """The facade's routing state in `folder`, each file written atomically: profiles,
    inventory, question index and routing.json (written last: its presence marks a
    complete folder). Learning writes it back here (`Conclave.state_dir`)."""
    from orchestrator.files import atomic_write_text

    c = conclave
    if c.profiles is None or c.inventory is None or c.state is None:
        raise ConfigError("nothing to save: run `profile` first")
    c.profiles.save(folder / "profiles.json")
    c.inventory.save(folder / "inventory")
    if c.questions is not None:
        c.questions.save(folder / "questions")
    c.state_dir = folder
    atomic_write_text(folder / "routing.json", c.state.model_dump_json(indent=1))


def load_state(conclave: Conclave, folder: Path) -> None:
    """The routing state saved in `folder`; an unreadable part is a ConfigError saying
    to profile again."""
    from skills.inventory import SkillInventory
    from skills.neighbours import QuestionIndex
    from skills.profiles import ProfileSet

    c = conclave
    c.profiles = ProfileSet.load(folder / "profiles.json")
    c.inventory = SkillInventory.load(folder / "inventory", c.embedder())
    c.questions = QuestionIndex.load(folder / "questions", c.embedder().name)
    try:
        c.state = RoutingState.model_validate_json((folder / "routing.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"routing state in {folder} is unreadable ({exc}); profile again"
        ) from exc
    c.state_dir = folder
    if c.monitor is not None:
        c.monitor.record = dict(c.state.accuracy)
