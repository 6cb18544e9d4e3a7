"""The validation questions, embedded, with each expert's graded answer to each: a second
witness of what an expert is good at, next to the keywords.

A question's keywords come from an LLM that can be wrong (it can name another subject's
keywords, for one question or every time it is asked); the question's own text cannot.
Its nearest validation questions by cosine similarity of their embeddings (the skill
inventory's embedder) and how each expert did on them estimate the expert's accuracy
on it, weighted by similarity: k-nearest-neighbour routing, as in RouterBench's kNN
router. How much to trust this witness against the keywords is learnt when profiling
(`skills.estimates.calibrate`), so a pool whose keyword model is reliable keeps the
paper's skills and one whose keyword model misleads leans on the neighbours.

The same neighbours stand in for the keyword model on the serving path
(`routing.skills: embedding`): `skills_near` names the keywords its nearest validation
questions were given, weighted by similarity, with no LLM call.

Learning goes on after profiling: `add` appends a graded question (a gold answer, user
feedback), and `save` persists it with the profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from orchestrator.errors import ConfigError
from skills.embedded import load_embedded, save_embedded

#: outcome codes: an expert's answer to a question was wrong, right, or not graded
WRONG, RIGHT, UNKNOWN = 0, 1, -1

#: (answers right, answers graded), similarity-weighted
Evidence = tuple[float, float]


class QuestionIndex:
    """Embedded validation questions and each expert's outcome on each."""

    def __init__(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        outcomes: Mapping[str, Sequence[int]],
        embedder: str,
        keywords: Sequence[Sequence[str]] | None = None,
    ) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        bad = [e for e, col in outcomes.items() if len(col) != len(ids)]
        if bad:
            raise ValueError(f"outcomes of {bad} do not cover the {len(ids)} questions")
        if keywords is not None and len(keywords) != len(ids):
            raise ValueError(f"{len(keywords)} keyword lists for {len(ids)} questions")
        #: each question's keywords from the keyword model: the skills of its neighbours
        self.keywords = [list(k) for k in keywords] if keywords is not None else [[]] * len(ids)
        self.ids = list(ids)
        self.vectors = vectors
        self.outcomes = {e: np.asarray(col, dtype=np.int8) for e, col in outcomes.items()}
        self.embedder = embedder

    def __len__(self) -> int:
        return len(self.ids)

    def add(
        self,
        qid: str,
        vector: np.ndarray,
        graded: Mapping[str, bool],
        keywords: Sequence[str] = (),
    ) -> None:
        """One more graded question: its embedding and the experts' outcomes on it (an
        expert new to the index gets UNKNOWN for the questions before). Copy on write,
        outcomes before vectors, so a reader on another thread never sees a neighbour
        without its outcomes."""
        n = len(self.ids)
        outcomes = dict(self.outcomes)
        for e in graded:
            outcomes.setdefault(e, np.full(n, UNKNOWN, dtype=np.int8))
        for e, col in outcomes.items():
            code = UNKNOWN if e not in graded else (RIGHT if graded[e] else WRONG)
            outcomes[e] = np.append(col, np.int8(code))
        v = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        self.outcomes = outcomes
        self.keywords = [*self.keywords, list(keywords)]
        self.ids = [*self.ids, qid]
        self.vectors = np.concatenate([self.vectors, v]) if n else v

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query (unit rows) to every indexed question."""
        if not len(self.ids):
            return np.zeros((len(queries), 0), dtype=np.float32)
        return np.asarray(queries, dtype=np.float32) @ self.vectors.T

    def evidence(
        self,
        sims: np.ndarray,
        experts: Sequence[str],
        k: int,
        exclude: Sequence[int] | None = None,
    ) -> list[dict[str, Evidence]]:
        """Per query row of `sims`: for each expert, its (right, graded) answers on the
        query's `k` nearest questions, each weighted by its similarity (negative
        similarities count for nothing). `exclude[i]` leaves question i out of row i's
        neighbours (leave-one-out, when calibrating on the index's own questions)."""
        out: list[dict[str, Evidence]] = []
        n = sims.shape[1]
        for row_i, row in enumerate(sims):
            row = row.copy()
            if exclude is not None and 0 <= exclude[row_i] < n:
                row[exclude[row_i]] = -np.inf
            kk = min(k, n - (exclude is not None))
            if kk <= 0:
                out.append({})
                continue
            near = np.argpartition(-row, kk - 1)[:kk]
            w = np.maximum(row[near], 0.0)
            ev: dict[str, Evidence] = {}
            for e in experts:
                col = self.outcomes.get(e)
                if col is None:
                    continue
                got = col[near]
                known = got != UNKNOWN
                if known.any():
                    ev[e] = (float(w[known] @ (got[known] == RIGHT)), float(w[known].sum()))
            out.append(ev)
        return out

    def skills_near(
        self, sims: np.ndarray, k: int, exclude: Sequence[int] | None = None
    ) -> list[list[str]]:
        """Per query row of `sims`: the keywords of its `k` nearest questions, each
        weighing its question's similarity, the heaviest first, as many as those
        questions have on average (the skills the keyword model would most likely
        name, without asking it). `exclude[i]` leaves question i out of row i's
        neighbours, as in `evidence`."""
        out: list[list[str]] = []
        n = sims.shape[1]
        kk = min(k, n - (exclude is not None))
        for row_i, row in enumerate(sims):
            if exclude is not None and 0 <= exclude[row_i] < n:
                row = row.copy()
                row[exclude[row_i]] = -np.inf
            if kk <= 0:
                out.append([])
                continue
            near = np.argpartition(-row, kk - 1)[:kk]
            votes: dict[str, float] = {}
            sizes = []
            for j in near:
                w = max(float(row[j]), 0.0)
                sizes.append(len(self.keywords[j]))
                for kw in self.keywords[j]:
                    votes[kw] = votes.get(kw, 0.0) + w
            size = max(round(sum(sizes) / len(sizes)), 1) if sizes else 0
            ranked = sorted((kw for kw, v in votes.items() if v > 0), key=lambda x: (-votes[x], x))
            out.append(ranked[:size])
        return out

    def save(self, folder: Path) -> None:
        """`vectors.npy` and `questions.json` in `folder`, each written atomically."""
        outcomes = {e: col.tolist() for e, col in self.outcomes.items()}
        meta = {"ids": self.ids, "outcomes": outcomes, "keywords": self.keywords}
        save_embedded(folder, "questions.json", self.vectors, self.embedder, meta)

    @classmethod
    def load(cls, folder: Path, embedder: str) -> QuestionIndex:
        """The index saved in `folder`; a missing, foreign or damaged one is a ConfigError
        that says so (callers profile again)."""
        meta, vectors = load_embedded(
            folder, "questions.json", embedder, "question index", "profile again"
        )
        try:
            return cls(meta["ids"], vectors, meta["outcomes"], embedder, meta.get("keywords"))
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"question index in {folder} is malformed ({exc}); profile again"
            ) from exc
