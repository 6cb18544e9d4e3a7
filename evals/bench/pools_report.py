"""The figures of `conclave bench routing`: typed results per pool and strategy,
aggregated over the seeds, and the chart (per pool, each strategy's mean accuracy as a
bar with the seeds' range as error bars, the oracle as a black marker, the expected
oracle as a grey one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.bench.scripted import ScriptedPool
from orchestrator.types import Item


class Spread(BaseModel):
    """A figure over the seeds: mean, min and max."""

    model_config = ConfigDict(extra="forbid")

    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(
            mean=round(sum(values) / len(values), 2),
            min=round(min(values), 2),
            max=round(max(values), 2),
        )


class StrategyFigures(BaseModel):
    """One strategy on one pool, over the seeds."""

    model_config = ConfigDict(extra="forbid")

    strategy: str
    accuracy: Spread = Field(..., description="Percent correct.")
    expert_calls_per_question: float = Field(..., description="Mean over the seeds.")
    calls_per_question: float = Field(..., description="LLM calls, keywords and aggregator too.")
    gap: Spread = Field(..., description="Accuracy minus max(oracle, majority), points.")


class SeedRun(BaseModel):
    """One pool at one seed: one `conclave eval` run."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    accuracy: dict[str, float] = Field(..., description="Per strategy, percent.")
    oracle: float
    majority: float
    singles: dict[str, float] = Field(..., description="Each expert alone, percent.")
    validation_accuracy: dict[str, float] = Field(..., description="Measured by profiling.")
    aggregator: str | None = Field(..., description="What profiling chose for symbolic-moe.")
    conclave: dict[str, Any] = Field(
        default_factory=dict,
        description="How profiling set up 'conclave': the neighbours' weight and number, "
        "the prior strength, and the aggregator LLM it asks where answers split (None: "
        "the vote).",
    )
    best_single: str | None
    failed_answers: int = Field(..., description="Expert answers that came back as errors.")
    wall_s: float


class PoolFigures(BaseModel):
    """Every strategy on one pool, with its references, over the seeds."""

    model_config = ConfigDict(extra="forbid")

    pool: str
    description: str
    experts: int
    keyword_error: float
    strategies: list[StrategyFigures]
    oracle: Spread
    majority: Spread
    reference: Spread = Field(..., description="max(oracle, majority) per seed.")
    singles: dict[str, float] = Field(..., description="Each expert alone, mean percent.")
    expected_validation_accuracy: dict[str, float] = Field(
        ..., description="What the script sets each expert's validation accuracy to, percent."
    )
    expected_oracle: float = Field(
        ...,
        description="The best expert per category by its script (garbage and failed calls "
        "counted wrong), in expectation on the test questions, percent: the oracle without "
        "the luck of picking on the test split itself.",
    )
    runs: list[SeedRun]


class Standing(BaseModel):
    """The first strategy of a run (the product's, `conclave`, by default) against
    another over every pool of the run, by the pools' mean accuracy: a sweep over drawn
    pools is read here, not pool by pool."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(..., description="The strategy the first one is set against.")
    ahead: int = Field(..., description="Pools where the first strategy scored more.")
    level: int = Field(..., description="Pools where both scored the same.")
    behind: int = Field(..., description="Pools where the first strategy scored less.")
    mean_difference: float = Field(..., description="First minus this one, points, mean.")
    worst_difference: float = Field(..., description="The lowest of those differences.")
    worst_pool: str = Field(..., description="The pool of the lowest difference.")


#: the references a standing is also taken against
REFERENCE, EXPECTED_ORACLE = "max(oracle, majority)", "oracle (expected)"


def standings(pools: Sequence[PoolFigures], strategies: Sequence[str]) -> list[Standing]:
    """`strategies[0]` against each other strategy, max(oracle, majority) and the
    expected oracle over `pools` (none for a run of one pool or one strategy)."""
    if len(pools) < 2 or len(strategies) < 2:
        return []
    first, out = strategies[0], []
    mean = {p.pool: {r.strategy: r.accuracy.mean for r in p.strategies} for p in pools}
    for p in pools:
        mean[p.pool][REFERENCE] = p.reference.mean
        mean[p.pool][EXPECTED_ORACLE] = p.expected_oracle
    for other in [*strategies[1:], REFERENCE, EXPECTED_ORACLE]:
        diffs = {n: round(m[first] - m[other], 2) for n, m in mean.items()}
        worst = min(diffs, key=lambda n: diffs[n])
        out.append(
            Standing(
                strategy=other,
                ahead=sum(d > 0 for d in diffs.values()),
                level=sum(d == 0 for d in diffs.values()),
                behind=sum(d < 0 for d in diffs.values()),
                mean_difference=round(sum(diffs.values()) / len(diffs), 2),
                worst_difference=diffs[worst],
                worst_pool=worst,
            )
        )
    return out


class PoolsBenchResult(BaseModel):
    """`conclave bench routing`: strategies on scripted pools, against the references."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int]
    per_category: int
    test_questions: int
    profile_questions: int
    strategies: list[str]
    embedder: str
    skills: str = Field(
        "auto", description="Where conclave got each question's skills (routing.skills)."
    )
    machine: str
    wall_s: float
    pools: list[PoolFigures]
    standings: list[Standing] = Field(
        default_factory=list,
        description="The first strategy against each other one over the pools (two or more).",
    )
    chart: str | None = Field(None, description="The chart's path, when written.")


def _expected(pool: ScriptedPool, items: Sequence[Item]) -> dict[str, float]:
    """Each expert's validation accuracy in expectation, from its script."""
    return {
        e.name: round(100 * sum(e.expected_in(it.category) for it in items) / len(items), 2)
        for e in pool.experts
    }


def _expected_oracle(pool: ScriptedPool, items: Sequence[Item]) -> float:
    """The best expert per category by its script, in expectation over `items`."""
    best = {c: max(e.expected_in(c) for e in pool.experts) for c in {it.category for it in items}}
    return round(100 * sum(best[it.category] for it in items) / len(items), 2)


def pool_figures(
    pool: ScriptedPool,
    runs: list[tuple[SeedRun, dict[str, Any]]],
    strategies: Sequence[str],
    profile_items: Sequence[Item],
    test_items: Sequence[Item],
) -> PoolFigures:
    """One pool's figures over its seeds' runs (each a `SeedRun` and its eval summary);
    each gap is taken per seed, then summarised."""
    seeds = [r for r, _ in runs]
    refs = [max(r.oracle, r.majority) for r in seeds]

    def mean(xs: Sequence[float]) -> float:
        return round(sum(xs) / len(xs), 2)

    rows = [
        StrategyFigures(
            strategy=s,
            accuracy=Spread.of([r.accuracy[s] for r in seeds]),
            expert_calls_per_question=mean([sm[s]["expert_calls_per_question"] for _, sm in runs]),
            calls_per_question=mean([sm[s]["calls_per_question"] for _, sm in runs]),
            gap=Spread.of([r.accuracy[s] - ref for r, ref in zip(seeds, refs, strict=True)]),
        )
        for s in strategies
    ]
    return PoolFigures(
        pool=pool.name,
        description=pool.description,
        experts=len(pool.experts),
        keyword_error=pool.keyword_error,
        strategies=rows,
        oracle=Spread.of([r.oracle for r in seeds]),
        majority=Spread.of([r.majority for r in seeds]),
        reference=Spread.of(refs),
        singles={e: mean([r.singles.get(e, 0.0) for r in seeds]) for e in seeds[0].singles},
        expected_validation_accuracy=_expected(pool, profile_items),
        expected_oracle=_expected_oracle(pool, test_items),
        runs=seeds,
    )


def chart_png(res: PoolsBenchResult) -> bytes:
    """Per pool, grouped bars of each strategy's mean accuracy (min-max as error bars),
    with the oracle as a black marker over the group and the expected oracle as a grey one."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(res.strategies)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(res.pools)), 4.5), dpi=110)
    for j, s in enumerate(res.strategies):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(res.pools))]
        rows = [next(r for r in p.strategies if r.strategy == s) for p in res.pools]
        means = [r.accuracy.mean for r in rows]
        errs = [
            [m - r.accuracy.min for m, r in zip(means, rows, strict=True)],
            [r.accuracy.max - m for m, r in zip(means, rows, strict=True)],
        ]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=s)
    ax.scatter(
        range(len(res.pools)),
        [p.oracle.mean for p in res.pools],
        marker="_",
        s=900,
        color="black",
        label="oracle (reference)",
        zorder=3,
    )
    ax.scatter(
        range(len(res.pools)),
        [p.expected_oracle for p in res.pools],
        marker="_",
        s=900,
        color="grey",
        label="oracle (expected)",
        zorder=3,
    )
    ax.set_xticks(range(len(res.pools)), [p.pool for p in res.pools], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        f"scripted pools: {res.test_questions} MMLU-Pro questions, {len(res.seeds)} seeds",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=min(4, n + 2), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.grid(axis="y", alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
