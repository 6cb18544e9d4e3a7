"""Embeddings on disk: `vectors.npy` next to a JSON file naming the embedder and the
vectors' checksum, each written atomically; loading checks both, so a cache embedded by
another model, or damaged, is an error that says what to do rather than wrong routing.
The skill inventory and the question index keep theirs this way."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import ConfigError
from orchestrator.files import atomic_write_bytes, atomic_write_text


def save_embedded(
    folder: Path, meta_file: str, vectors: np.ndarray, embedder: str, meta: dict[str, Any]
) -> None:
    """`vectors.npy` and `meta_file` (with `meta`, the embedder and the checksum)."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, vectors)
    atomic_write_bytes(folder / "vectors.npy", buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    body = {"embedder": embedder, **meta, "vectors_sha256": sha}
    atomic_write_text(folder / meta_file, json.dumps(body, indent=1))


def load_embedded(
    folder: Path, meta_file: str, embedder: str, what: str, fix: str
) -> tuple[dict[str, Any], np.ndarray]:
    """(meta, vectors) saved by `save_embedded`; a missing, foreign or damaged one is a
    ConfigError naming `what` and ending with `fix`."""
    try:
        meta = json.loads((folder / meta_file).read_text())
        raw = (folder / "vectors.npy").read_bytes()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} in {folder} is unreadable ({exc}); {fix}") from exc
    if meta.get("embedder") != embedder:
        raise ConfigError(
            f"{what} in {folder} was embedded with {meta.get('embedder')!r}, "
            f"not {embedder!r}; {fix}"
        )
    if hashlib.sha256(raw).hexdigest() != meta.get("vectors_sha256"):
        raise ConfigError(f"{what} vectors in {folder} are damaged; {fix}")
    return meta, np.load(io.BytesIO(raw))
