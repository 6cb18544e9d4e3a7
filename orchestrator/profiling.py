"""The profile cache: a pool's routing state, learnt once per (experts, routing settings,
validation items) and reused by `eval`, `profile`, `route` and `serve`.

The key hashes the experts' configs (and their model files' names, sizes and times), the
routing settings and the validation items, so a repeat run reuses the profile and any
change profiles again. Folders are written atomically by `Conclave.save_state`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.config import ConclaveConfig
from orchestrator.errors import ConfigError
from orchestrator.types import Item

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_files(model: str) -> list[tuple[str, int, int]] | str:
    p = Path(model)
    if not p.is_dir():
        return model  # a hub id or remote name: its name is all we know
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir())]


def profile_key(config: ConclaveConfig, items: Sequence[Item], dataset: str) -> str:
    experts = [
        {**e.model_dump(mode="json"), "files": _model_files(getattr(e.backend, "model", ""))}
        for e in config.pool.experts
    ]
    rows = [(i.id, i.question, i.gold_answer, i.answer_type) for i in items]
    return _hash(
        {
            "experts": experts,
            "routing": config.routing.model_dump(mode="json"),
            "dataset": dataset,
            "rows": rows,
        }
    )


def ensure_profile(
    conclave: Conclave,
    items: Sequence[Item],
    dataset: str,
    cache_dir: Path,
    progress: bool = False,
    on_event: Callable[[str], None] = lambda _: None,
) -> tuple[Path, bool]:
    """Load the cached profile for these experts and items, or profile and cache it.
    Returns the folder and whether it was reused."""
    folder = cache_dir / "profiles" / profile_key(conclave.config, items, dataset)
    if (folder / "routing.json").exists():
        try:
            conclave.load_state(folder)
            on_event(f"profile reused from {folder}")
            return folder, True
        except ConfigError as e:  # corrupt cache: profile again
            on_event(f"cached profile unusable ({e}); profiling again")
    on_event(f"profiling {len(conclave.experts)} experts on {len(items)} validation questions")
    conclave.profile(items, dataset=dataset, progress=progress)
    conclave.save_state(folder)
    return folder, False
