"""Which in-model experts fire for which skills, in an MoE model served by vLLM.

The model runs in the expert pool (a vLLM engine in a Ray actor); each category's
questions are answered as one batch while hooks on the model's MoE gates count, per
layer, the tokens (prompt and completion) routed to each in-model expert. That is the
model's activation profile: the share of each category's tokens each expert took, per
layer, and how far a category's routing departs from the model's overall routing (total
variation distance: 0 = the same experts as everyone).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import parse_config

#: How kernels/ serves a model to look inside it (the context length is the checkpoint's).
SERVE_ARGS = {"dtype": "bfloat16", "enforce_eager": True, "kv_cache_memory_bytes": 64 * 2**20}


def activation_profile(
    model: Path,
    items: Sequence[Any],
    engine_args: dict[str, Any] | None = None,
    max_tokens: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Serve `model`, answer `items` one category at a time, and count its routing."""
    from orchestrator.prompts import messages_for
    from workers.batch import GenerationRequest
    from workers.pool import ExpertPool
    from workers.vllm_backend import VLLMBackend

    args = SERVE_ARGS | dict(engine_args or {})
    cfg = parse_config(
        {
            "cluster": {"dashboard": False},
            "pool": {
                "experts": [
                    {
                        "name": "moe",
                        "backend": {"type": "vllm", "model": str(model), "engine_args": args},
                        "sampling": {"max_tokens": max_tokens, "temperature": 0.0},
                    }
                ]
            },
        }
    )
    by_cat: dict[str, list[Any]] = {}
    for it in items:
        by_cat.setdefault(it.category or "all", []).append(
            GenerationRequest(item_id=it.id, expert="moe", messages=messages_for(it.question))
        )
    with ExpertPool(cfg) as pool:
        (first,) = pool.run(next(iter(by_cat.values()))[:1])  # loads the model
        if not first.ok:
            raise RuntimeError(f"{model} does not serve: {first.error}")
        backend = pool.backends["moe"]
        if not isinstance(backend, VLLMBackend):  # only a vLLM engine can hook its gates
            raise RuntimeError(f"{model} must be served by vLLM to count its experts")
        counts = {cat: backend.expert_counts(reqs) for cat, reqs in by_cat.items()}
    if not any(counts.values()):
        raise RuntimeError(f"{model} has no MoE layers (no gate with experts)")
    return summarize(counts, str(model), questions=len(items))


def summarize(
    counts: dict[str, list[list[int]]], model: str = "", questions: int = 0
) -> dict[str, Any]:
    """From tokens per expert per layer for each category: each expert's share of a
    category's tokens per layer, and each category's distance from the overall routing."""
    layers = max(len(c) for c in counts.values())
    experts = max(len(row) for c in counts.values() for row in c)
    totals = {
        cat: [
            [(c[layer][e] if layer < len(c) and e < len(c[layer]) else 0) for e in range(experts)]
            for layer in range(layers)
        ]
        for cat, c in sorted(counts.items())
    }
    overall = [
        [sum(t[layer][e] for t in totals.values()) for e in range(experts)]
        for layer in range(layers)
    ]

    def shares(rows: list[list[int]]) -> list[list[float]]:
        return [[round(n / max(1, sum(r)), 4) for n in r] for r in rows]

    by_cat = {cat: shares(t) for cat, t in totals.items()}
    base = shares(overall)
    distance = {
        cat: round(
            sum(
                0.5 * sum(abs(a - b) for a, b in zip(s[layer], base[layer], strict=True))
                for layer in range(layers)
            )
            / layers,
            4,
        )
        for cat, s in by_cat.items()
    }
    return {
        "model": model,
        "layers": layers,
        "experts": experts,
        "questions": questions,
        "shares": by_cat,
        "overall": base,
        "distance_from_overall": distance,
        "top_expert": {
            cat: [max(range(experts), key=lambda e: row[e]) for row in s]
            for cat, s in by_cat.items()
        },
    }


def plot(profile: dict[str, Any], path: Path) -> Path:
    """A heatmap per layer: categories x experts, share of tokens (atomic PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from orchestrator.files import atomic_write_bytes

    cats = list(profile["shares"])
    layers = profile["layers"]
    fig, axes = plt.subplots(1, layers, figsize=(3 + 3 * layers, 1 + 0.45 * len(cats)))
    axes = [axes] if layers == 1 else list(axes)
    for layer, ax in enumerate(axes):
        grid = [profile["shares"][c][layer] for c in cats]
        im = ax.imshow(grid, cmap="viridis", vmin=0, aspect="auto")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("expert")
        ax.set_xticks(range(profile["experts"]))
        ax.set_yticks(range(len(cats)), cats if layer == 0 else [""] * len(cats))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"share of each category's tokens per in-model expert: {profile['model']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
