"""Expert-count hooks installed into a served MoE model, inside the engine's actor.

`EngineHost.expert_counts` runs `install_expert_counters` on the model through vLLM's
`apply_model`, generates, then `remove_expert_counters` reads the counts back and takes
the hooks out. Both are module-level functions so that an engine running in worker
processes receives them by reference (vLLM pickles what `apply_model` runs).
"""

from __future__ import annotations

from typing import Any


def install_expert_counters(model: Any) -> None:
    """Hook every MoE block: a module with a `gate` and `experts` whose top-k is known
    (`experts.moe_config.experts_per_token` in vLLM's MoE runner, else `experts.top_k`)."""
    import torch

    counts: list[torch.Tensor | None] = []
    handles = []
    for mod in model.modules():
        gate, experts = getattr(mod, "gate", None), getattr(mod, "experts", None)
        cfg = getattr(experts, "moe_config", None)
        k = getattr(cfg, "experts_per_token", None) or getattr(experts, "top_k", None)
        if gate is None or not isinstance(k, int):
            continue
        counts.append(None)

        def hook(_m: Any, _inp: Any, out: Any, i: int = len(counts) - 1, k: int = k) -> None:
            logits = out[0] if isinstance(out, tuple) else out
            ids = logits.float().topk(k, dim=-1).indices.flatten()
            seen = torch.bincount(ids, minlength=logits.shape[-1]).cpu()
            counts[i] = seen if counts[i] is None else counts[i] + seen

        handles.append(gate.register_forward_hook(hook))
    model._conclave_expert_counts = (counts, handles)


def remove_expert_counters(model: Any) -> list[list[int]]:
    """Take the hooks out; per MoE layer, the tokens each of its experts was sent."""
    counts, handles = model.__dict__.pop("_conclave_expert_counts", ([], []))
    for h in handles:
        h.remove()
    return [c.tolist() if c is not None else [] for c in counts]
