"""Named datasets for `conclave eval`: the generated skillmix benchmark, or a local file
of MMLU-Pro, GPQA, MedMCQA or AIME rows (read by the formats in `orchestrator.formats`),
with category and size filters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from orchestrator.formats import DatasetError, load_file
from orchestrator.types import Item


def load_dataset(
    dataset: str,
    split: str = "test",
    *,
    limit: int | None = None,
    categories: Iterable[str] | None = None,
    seed: int = 0,
    per_category: int = 25,
) -> list[Item]:
    """Items of `dataset`: 'skillmix' (generated; `per_category` questions of each
    category in `split`) or a path to a local file (its own rows; `split` is ignored).
    `categories` keeps those categories; `limit` keeps N per category: skillmix's first
    N, a file's N drawn with `seed`."""
    cats = tuple(categories or ())
    if dataset == "skillmix":
        from evals.skillmix import CATEGORIES, SPLITS, generate

        chosen = next((s for s in SPLITS if s == split), None)  # the split, as a `Split`
        if chosen is None:
            raise DatasetError(f"unknown skillmix split {split!r}; choose one of {SPLITS}")
        unknown = sorted(set(cats) - set(CATEGORIES))
        if unknown:
            raise DatasetError(
                f"unknown skillmix categories {unknown}; choose from {', '.join(CATEGORIES)}"
            )
        n = min(per_category, limit) if limit else per_category
        rows = generate(chosen, n, seed=seed, categories=cats or CATEGORIES)
        return [Item(**q.model_dump()) for q in rows]
    items = load_file(dataset, seed)
    if cats:
        have = {i.category for i in items}
        missing = sorted(set(cats) - have)
        if missing:
            raise DatasetError(
                f"{dataset}: no rows of categories {missing}; it has "
                f"{', '.join(sorted(str(c) for c in have))}"
            )
        items = [i for i in items if i.category in cats]
    return _per_category(items, limit, seed) if limit else items


def _per_category(items: list[Item], limit: int, seed: int) -> list[Item]:
    """At most `limit` items of each category, drawn with `seed` (a file's first rows are
    often one category: MMLU-Pro's first 40 are all biology), in the file's order."""
    import random

    by: dict[str | None, list[int]] = {}
    for i, it in enumerate(items):
        by.setdefault(it.category, []).append(i)
    rng = random.Random(seed)
    kept = sorted(
        i for idx in by.values() for i in (rng.sample(idx, limit) if len(idx) > limit else idx)
    )
    return [items[i] for i in kept]


#: skillmix questions per category by default: 80 test and 80 validation questions keep
#: a first run of the embedded default within minutes on two cores
SKILLMIX_LIMIT = 10


def eval_items(
    dataset: str,
    split: str = "validation",
    limit: int | None = None,
    categories: Sequence[str] | None = None,
    seed: int = 0,
) -> list[Item]:
    """The items of `dataset` with the defaults every command shares (skillmix: 10 per
    category): `eval`'s test and validation sets, and the validation set `profile`,
    `route` and `serve` build or reuse the same cached profile from."""
    default = SKILLMIX_LIMIT if dataset == "skillmix" else None
    return load_dataset(
        dataset, split, limit=limit or default, categories=categories or [], seed=seed
    )
