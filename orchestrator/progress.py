"""The one look of Conclave's progress bars (rich), shared by the pool, the eval and the zoo."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress


def progress_bar(width: int = 32, *extra_columns: Any, **kwargs: Any) -> Progress:
    """A rich Progress: description, bar, done/total, `extra_columns`, elapsed time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        **kwargs,
    )
