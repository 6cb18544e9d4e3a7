"""Expert masking in a served MoE model (Mixture of Tunable Experts, at inference).

`mask_checkpoint` writes a variant of a Mixtral-style checkpoint whose router can never
select the chosen experts. Mixtral routes by softmax over the router's logits, top-k, and
renormalises the k weights, so forcing a logit to -inf and removing the expert (its
router row and its FFN) select the same experts with the same weights; removal is what a
bias-free linear router can express, and vLLM serves the variant as any Mixtral with
fewer experts. `masking_study` serves the original, the variant, and variants with the
same number of experts chosen at random, and reports per-category accuracy on skillmix.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_EXPERT = re.compile(r"^(model\.layers\.\d+\.block_sparse_moe\.experts\.)(\d+)(\..*)$")
_GATE = re.compile(r"^model\.layers\.\d+\.block_sparse_moe\.gate\.weight$")


def _check_replaceable(dst: Path) -> None:
    """`dst` is new, or a masked variant this wrote before (its config.json says which
    experts it masks): anything else there (`--out ~/models`, a folder of that name) is
    not ours to replace. Raises ValueError."""
    if not dst.exists():
        return
    try:
        ours = "conclave_masked_experts" in json.loads((dst / "config.json").read_text())
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ValueError(
            f"{dst} exists and is not a masked variant written here: it would be replaced; "
            "give another --out folder"
        )


def mask_checkpoint(src: Path, dst: Path, masked: Sequence[int]) -> Path:
    """Copy the Mixtral checkpoint at `src` to `dst` without the `masked` experts (in
    every layer). Written to a temporary folder and renamed into place."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((src / "config.json").read_text())
    if "num_local_experts" not in cfg:
        raise ValueError(f"{src} is not a Mixtral-style MoE checkpoint (no num_local_experts)")
    n, k = cfg["num_local_experts"], cfg.get("num_experts_per_tok", 2)
    bad = sorted(set(masked) - set(range(n)))
    if bad:
        raise ValueError(f"experts {bad} do not exist: the model has {n} (0..{n - 1})")
    keep = [e for e in range(n) if e not in set(masked)]
    if len(keep) < k:
        raise ValueError(f"masking {len(set(masked))} of {n} experts leaves fewer than top-k={k}")
    new_id = {old: new for new, old in enumerate(keep)}
    _check_replaceable(dst)
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{src} has no .safetensors weights")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for f in src.iterdir():
            if (
                f.suffix != ".safetensors"
                and f.name != "model.safetensors.index.json"
                and f.is_file()
            ):
                shutil.copy2(f, tmp / f.name)
        index: dict[str, str] = {}
        for f in files:
            tensors = load_file(str(f))
            out = {}
            for name, t in tensors.items():
                if m := _EXPERT.match(name):
                    e = int(m.group(2))
                    if e in new_id:
                        out[f"{m.group(1)}{new_id[e]}{m.group(3)}"] = t
                elif _GATE.match(name):
                    out[name] = t[keep].contiguous()
                else:
                    out[name] = t
            save_file(out, str(tmp / f.name), metadata={"format": "pt"})
            index.update(dict.fromkeys(out, f.name))
        if (src / "model.safetensors.index.json").exists():
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": index}, indent=1)
            )
        cfg["num_local_experts"] = len(keep)
        cfg["conclave_masked_experts"] = sorted(set(masked))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def masking_study(
    model: Path,
    masked: Sequence[int],
    items: Sequence[Any],
    folder: Path,
    random_trials: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-category accuracy of the original, the variant without `masked`, and
    `random_trials` variants without as many random experts, served side by side."""
    from kernels.activations import SERVE_ARGS
    from orchestrator.answers import extract_answer
    from orchestrator.config import parse_config
    from orchestrator.prompts import messages_for
    from workers.batch import GenerationRequest
    from workers.pool import ExpertPool

    n = json.loads((model / "config.json").read_text())["num_local_experts"]
    rng = random.Random(seed)
    variants: dict[str, Path] = {"original": model}
    variants[f"masked {sorted(masked)}"] = mask_checkpoint(model, folder / "chosen", masked)
    # distinct random picks, none the chosen set (while enough combinations remain)
    combos = [
        list(c)
        for c in itertools.combinations(range(n), len(set(masked)))
        if sorted(c) != sorted(set(masked))
    ]
    for t, pick in enumerate(rng.sample(combos, min(random_trials, len(combos)))):
        variants[f"random {pick}"] = mask_checkpoint(model, folder / f"random{t}", pick)
    names = {v: f"v{i}" for i, v in enumerate(variants)}
    cfg = parse_config(
        {
            "cluster": {"dashboard": False},
            "pool": {
                "experts": [
                    {
                        "name": names[v],
                        "backend": {"type": "vllm", "model": str(p), "engine_args": SERVE_ARGS},
                        "sampling": {"max_tokens": 32, "temperature": 0.0},
                    }
                    for v, p in variants.items()
                ],
                "max_parallel_groups": 1,
            },
        }
    )
    reqs = [
        GenerationRequest(
            item_id=f"{it.id}|{names[v]}", expert=names[v], messages=messages_for(it.question)
        )
        for v in variants
        for it in items
    ]
    with ExpertPool(cfg) as pool:
        results = {r.item_id: r for r in pool.run(reqs, progress=progress)}
    cats = sorted({it.category for it in items})
    table: dict[str, dict[str, float]] = {}
    for v in variants:
        acc: dict[str, list[bool]] = {c: [] for c in cats}
        for it in items:
            r = results[f"{it.id}|{names[v]}"]
            got = extract_answer(r.text, it.question, it.answer_type) if r.ok else None
            acc[it.category].append(got == it.gold_answer)
        table[v] = {c: round(100 * sum(a) / len(a), 1) for c, a in acc.items()}
    return {"model": str(model), "experts": n, "accuracy": table}
