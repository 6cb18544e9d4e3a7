"""Reading a question against the profile before any expert answers it: its embedding,
the skills its nearest validation questions were given, each expert's record on those
neighbours, and whether it is within the profile's scope at all.

The facade holds one `QuestionReader` (`Conclave.reader`); the `conclave` strategy reads
evidence and scope through it, and `Conclave.skills_of` its skills when
`routing.skills` is 'embedding'. Each question is embedded once (a bounded cache), so a
batch planned for skills, evidence and scope costs one embedding call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.answers import options_of
from orchestrator.types import Item

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave
    from skills.neighbours import Evidence

#: nearest validation questions whose keywords stand in for the keyword model
SKILL_NEIGHBOURS = 10
#: question embeddings kept (about 1.5 KB each with MiniLM)
VECTOR_CACHE = 4096


class QuestionReader:
    """The facade's view of new questions through its question index."""

    def __init__(self, conclave: Conclave) -> None:
        self.conclave = conclave
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def vectors(self, items: Sequence[Item]) -> np.ndarray:
        """The items' question embeddings (the inventory's embedder), each question
        embedded once."""
        with self._lock:
            known = dict(self._vectors)
        new = list(dict.fromkeys(it.question for it in items if it.question not in known))
        if new:
            fresh = dict(zip(new, self.conclave.embedder().encode(new), strict=True))
            known.update(fresh)
            with self._lock:
                self._vectors.update(fresh)
                while len(self._vectors) > VECTOR_CACHE:
                    self._vectors.pop(next(iter(self._vectors)))
        return np.stack([known[it.question] for it in items])

    def _sims(self, items: Sequence[Item]) -> np.ndarray | None:
        index = self.conclave.questions
        if index is None or not len(index) or not items:
            return None
        return index.similarities(self.vectors(items))

    def skills_near(self, items: Sequence[Item]) -> list[list[str]]:
        """Per item, the keywords its nearest validation questions were given, heaviest
        first (`QuestionIndex.skills_near`); [] without a question index."""
        sims = self._sims(items)
        index = self.conclave.questions
        if sims is None or index is None:
            return [[] for _ in items]
        return index.skills_near(sims, SKILL_NEIGHBOURS)

    def neighbours_of(self, items: Sequence[Item]) -> list[dict[str, Evidence]]:
        """Per item, each expert's similarity-weighted record on the item's nearest
        validation questions (`skills.neighbours`); empty when profiling chose to trust
        the keywords alone."""
        st, index = self.conclave.state, self.conclave.questions
        if index is None or st is None or st.neighbour_weight <= 0:
            return [{} for _ in items]
        sims = self._sims(items)
        if sims is None:
            return [{} for _ in items]
        return index.evidence(sims, list(index.outcomes), st.neighbours)

    def scope_of(self, items: Sequence[Item]) -> list[tuple[float | None, str | None]]:
        """Per item, (similarity of its nearest validation question, why it is out of the
        profile's scope or None): free-form (no options to choose from), or less like
        the validation questions than any of them is like another."""
        st = self.conclave.state
        sims = self._sims(items)
        nearest = [float(row.max()) for row in sims] if sims is not None else [None] * len(items)
        out: list[tuple[float | None, str | None]] = []
        for it, near in zip(items, nearest, strict=True):
            why = None
            if it.answer_type == "text" or (
                it.answer_type == "choice" and not options_of(it.question)
            ):
                why = "free-form: the question lists no options to choose from"
            elif near is not None and st is not None and near < st.scope:
                why = (
                    f"unlike every validation question (nearest similarity {near:.2f}, below "
                    f"{st.scope:.2f}, the least typical validation question's)"
                )
            out.append((near, why))
        return out
