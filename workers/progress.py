"""The pool's progress bar over a batch's items (rich), or nothing when not asked for."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress


class ItemProgress:
    """A rich progress bar over items, or nothing. Group threads advance it as they finish."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: Progress | None = None
        self._lock = threading.Lock()
        if enabled:
            from orchestrator.progress import progress_bar

            self._bar = progress_bar(32, transient=True)
            self._task = self._bar.add_task("scheduling", total=total)

    def __enter__(self) -> ItemProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    def advance(self, n: int) -> None:
        if self._bar is not None and n:
            with self._lock:
                self._bar.advance(self._task, n)

    def advance_when_done(self, n: int, _fut: Future[Any]) -> None:
        """`advance(n)`, as a future's done-callback (the future is not looked at)."""
        self.advance(n)
