"""Skill keywords for a question, drawn from an LLM as in Symbolic-MoE.

The keyword model is asked which knowledge or skills a question needs, sampled `samples`
times at `temperature`; keywords are lower-cased, stripped of dots, kept when at most
`max_chars` long and present in at least `min_samples` of the samples. All questions'
samples go to the pool as one batch, so the keyword model is loaded once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from orchestrator.config import KeywordSettings
from workers.batch import GenerationRequest, GenerationResult, Message

_AFTER_LABEL = re.compile(r"keywords?\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)


def parse_sample(text: str, max_chars: int = 20) -> list[str]:
    """Keywords in one sample: the text after "Keywords:" (else all of it), split at commas
    and line breaks, lower-cased, dots and list marks stripped, long ones dropped."""
    found = _AFTER_LABEL.search(text)
    body = found.group(1) if found else text
    out: list[str] = []
    for part in re.split(r"[,\n;]", body):
        kw = re.sub(r"^[\s\-*\d.)]+", "", part).replace(".", "").strip().strip("\"'`*").lower()
        kw = " ".join(kw.split())
        if kw and len(kw) <= max_chars and kw not in out:
            out.append(kw)
    return out


def combine_samples(samples: Sequence[str | None], settings: KeywordSettings) -> list[str]:
    """The keywords present in at least `min_samples` samples, most frequent first."""
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for text in samples:
        for kw in parse_sample(text or "", settings.max_chars):
            counts[kw] += 1
            first_seen.setdefault(kw, len(first_seen))
    kept = [kw for kw, n in counts.items() if n >= settings.min_samples]
    return sorted(kept, key=lambda kw: (-counts[kw], first_seen[kw]))


def keyword_requests(
    items: Sequence[tuple[str, str]], expert: str, settings: KeywordSettings
) -> list[GenerationRequest]:
    """`samples` requests per (item_id, question) for the keyword model `expert`."""
    return [
        GenerationRequest(
            item_id=f"{item_id}#kw{i}",
            expert=expert,
            messages=[Message(role="user", content=settings.prompt.format(question=question))],
            sampling={
                "temperature": settings.temperature,
                "max_tokens": settings.max_tokens,
                "seed": settings.seed + i,
            },
        )
        for item_id, question in items
        for i in range(settings.samples)
    ]


def collect_keywords(
    results: Sequence[GenerationResult], settings: KeywordSettings
) -> dict[str, list[str]]:
    """item_id -> its keywords, from the results of `keyword_requests` (failed samples count
    as empty)."""
    by_item: dict[str, list[str | None]] = {}
    for r in results:
        item_id = r.item_id.rsplit("#kw", 1)[0]
        by_item.setdefault(item_id, []).append(r.text if r.ok else None)
    return {item: combine_samples(texts, settings) for item, texts in by_item.items()}
