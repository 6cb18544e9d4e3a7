"""The zoo as a pool, and each zoo model's accuracy per skillmix category."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from agents.zoo.build import ZooManifest
from evals.grading import is_correct
from evals.skillmix import CATEGORIES, generate
from orchestrator.config import ConclaveConfig, Role, parse_config
from orchestrator.prompts import mc_messages

#: Answer lengths on the CPU default: SmolLM2 reasons briefly and states a letter within
#: ~150 tokens; Gemma 3 270M is a base model that repeats the prompt, so more tokens only
#: cost time (~140 tokens/s on two cores); the trained models answer in a sentence.
MAX_TOKENS = {"smollm2": 160, "gemma3": 64}
#: the zoo's generalist: `conclave`'s answer to questions outside the specialists' scope
FALLBACK = "smollm2"

# no dtype: the checkpoints' bf16 where the CPU computes it natively, float32 where it
# does not, 2-2.5x faster there (`workers.dtype`)
CONVERTED_ARGS = {
    "enforce_eager": True,
    "max_model_len": 2048,
    "kv_cache_memory_bytes": 128 * 2**20,
}
TRAINED_ARGS = {
    "enforce_eager": True,
    "max_model_len": 512,
    "kv_cache_memory_bytes": 32 * 2**20,
}


def zoo_config(root: Path, manifest: ZooManifest, names: list[str] | None = None) -> ConclaveConfig:
    """A pool config serving the zoo's models (all, or `names`) from `root`."""
    chosen = [n for n in manifest.entries if not names or n in names]
    # every zoo model resident at once: their actors share the machine's CPUs (Ray would
    # queue an actor that does not fit; the pool would then evict one each stage). A
    # fraction of a CPU also means one OpenMP thread per engine (Ray's OMP_NUM_THREADS=1):
    # an engine alone would run 1.8x faster on two threads (SmolLM2 float32, Ice Lake), but
    # two engines of two threads each on two cores ran 3-5x slower than of one each
    cpus = round(min(0.25, 0.95 * (os.cpu_count() or 2) / max(1, len(chosen))), 3)
    experts = []
    for name in chosen:
        e = manifest.entries[name]
        converted = e.kind == "converted"
        experts.append(
            {
                "name": name,
                "backend": {
                    "type": "vllm",
                    "model": str(root / name),
                    "engine_args": CONVERTED_ARGS if converted else TRAINED_ARGS,
                },
                "sampling": {"temperature": 0.0, "max_tokens": MAX_TOKENS.get(name, 32)},
                "resources": {
                    "num_cpus": cpus,
                    "memory_gb": round(e.size_bytes / 2**30 * 3 + 0.6, 1),
                },
                "roles": e.roles,
            }
        )
    # a question the specialists were not profiled on goes to the generalist LLM
    routing = {"fallback": FALLBACK} if FALLBACK in chosen else {}
    # the Ray dashboard is on (127.0.0.1): `conclave serve` prints its URL at start
    return parse_config({"pool": {"experts": experts}, "routing": routing})


def evaluate_zoo(
    config: ConclaveConfig, per_category: int = 50, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Accuracy of every expert on the test split, per category, and the oracle's."""
    from workers.batch import GenerationRequest
    from workers.pool import ExpertPool

    rows = generate("test", per_category, seed=seed)
    names = config.pool.with_role(Role.EXPERT)
    reqs = [
        GenerationRequest(item_id=f"{q.id}|{n}", expert=n, messages=mc_messages(q.question))
        for q in rows
        for n in names
    ]
    with ExpertPool(config) as pool:
        results = pool.run(reqs, progress=progress)
    hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    errors: dict[str, str] = {}
    for q, chunk in zip(rows, _chunks(results, len(names)), strict=True):
        for r in chunk:
            hits[r.expert][q.category].append(
                r.ok and is_correct(r.text, q.gold_answer, q.question)
            )
            if not r.ok and r.error is not None:
                errors.setdefault(r.expert, r.error.message)
    acc = {
        n: {c: round(100 * sum(v) / len(v), 1) for c, v in sorted(hits[n].items())} for n in names
    }
    overall = {n: round(sum(acc[n].values()) / len(acc[n]), 1) for n in names}
    best = max(overall, key=lambda n: overall[n])
    oracle_by_cat = {c: max(acc[n].get(c, 0.0) for n in names) for c in CATEGORIES}
    oracle = round(sum(oracle_by_cat.values()) / len(oracle_by_cat), 1)
    return {
        "split": "test",
        "questions": len(rows),
        "per_category": per_category,
        "accuracy": acc,
        "overall": overall,
        "best_single": {"expert": best, "accuracy": overall[best]},
        "oracle": {"accuracy": oracle, "by_category": oracle_by_cat},
        "oracle_gain_points": round(oracle - overall[best], 1),
        "errors": errors,
    }


def _chunks(seq: list[Any], n: int) -> list[list[Any]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]
