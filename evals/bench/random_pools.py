"""`conclave bench routing --pool random-<seed>`: routing pools drawn at random, test
worlds no one tuned the router to.

The named pools (`evals.bench.pools.POOLS`) each isolate one situation; a user's pool
mixes them. A drawn pool does too: specialists whose subjects may overlap (one subject
can have two good experts, another none), generalists whose accuracy varies a little by
subject as real ones do, sometimes a model that fails or answers garbage, a keyword model
that is sometimes wrong (per call, or per question every time) and wrong answers that
agree more or less often. The same seed draws the same pool on every machine (a
`random.Random(seed)`, no global state), so a figure names its pool by its seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from evals.bench.scripted import CATEGORIES, ScriptedExpert, ScriptedPool, Spec

#: `--pool random-<seed>`
RANDOM = re.compile(r"random-(\d+)")
HINT = "random-<seed> (a pool drawn at random: random-7)"


def _clip(a: float) -> float:
    return round(min(max(a, 0.02), 0.98), 2)


def random_routing_pool(seed: int) -> ScriptedPool:
    """The routing pool drawn from `seed`.

    0-6 specialists, each on 1-6 subjects drawn independently (so they may overlap) at
    0.55-0.95 there and 0.15-0.45 elsewhere; 0-3 generalists at 0.35-0.75 give or take
    0.1 per subject; at least two experts in all, a generalist among them where there
    are fewer than two specialists. In
    three pools in ten one expert also fails 5-20% of its calls (HTTP 500) and answers
    garbage 0-40% of the time. The keyword model names another subject's keywords 0-30%
    of the time, for a third of the pools stuck to the same questions; a wrong answer is
    the question's shared distractor 0-40% of the time."""
    rng = random.Random(seed)
    specialists = rng.randint(0, 6)
    generalists = rng.randint(1 if specialists < 2 else 0, 3)
    if specialists + generalists < 2:
        generalists = 2 - specialists
    experts: list[ScriptedExpert] = []
    for n in range(specialists):
        mine = rng.sample(CATEGORIES, rng.randint(1, 6))
        experts.append(
            ScriptedExpert(
                name=f"s{n}",
                accuracy={c: _clip(rng.uniform(0.55, 0.95)) for c in mine},
                default=_clip(rng.uniform(0.15, 0.45)),
            )
        )
    for n in range(generalists):
        base = rng.uniform(0.35, 0.75)
        experts.append(
            ScriptedExpert(
                name=f"g{n}",
                accuracy={c: _clip(base + rng.uniform(-0.1, 0.1)) for c in CATEGORIES},
                default=_clip(base),
            )
        )
    faulty = ""
    if rng.random() < 0.3:
        i = rng.randrange(len(experts))
        errors, garbage = round(rng.uniform(0.05, 0.2), 2), round(rng.uniform(0.0, 0.4), 2)
        experts[i] = experts[i].model_copy(update={"errors": errors, "garbage": garbage})
        faulty = f"; {experts[i].name} fails {errors:.0%} of calls, garbage {garbage:.0%}"
    keyword_error = rng.choice((0.0, 0.0, 0.1, 0.2, 0.3))
    per_question = keyword_error > 0 and rng.random() < 1 / 3
    distractor = round(rng.uniform(0.0, 0.4), 2)
    kw = f"keywords wrong {keyword_error:.0%}" if keyword_error else "keywords sound"
    if per_question:
        kw += " of questions, every time"
    return ScriptedPool(
        name=f"random-{seed}",
        description=f"random pool {seed}: {specialists} specialists, {generalists} "
        f"generalists{faulty}; {kw}; distractor {distractor}",
        experts=experts,
        keyword_error=keyword_error,
        keyword_error_per_question=per_question,
        distractor=distractor,
    )


def drawn(pools: Sequence[str | Spec], draw: Callable[[int], Spec]) -> list[str | Spec]:
    """`pools` with each `random-<seed>` name replaced by `draw(seed)`: a routing pool
    (`random_routing_pool`) or a free-agent scenario (`bench free-agents`)."""
    return [
        draw(int(m[1])) if isinstance(p, str) and (m := RANDOM.fullmatch(p)) else p for p in pools
    ]
