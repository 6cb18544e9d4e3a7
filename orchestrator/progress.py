"""The one look of Conclave's progress bars (rich), shared by the pool, the eval and the zoo.

Where the console is not a terminal (a log file, CI, `make demo | tee`), rich draws
nothing until a bar stops, so a stage that runs for minutes (profiling the zoo: 9 on an
Ice Lake CPU) showed one line and then silence. There the bars also print a plain line per
unfinished task every `log_every_s` seconds.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: seconds between two plain progress lines where the console is not a terminal
LOG_EVERY_S = 30.0


class LoggedProgress(Progress):
    """A rich Progress that, off a terminal, prints `<task>: <done>/<total>, <elapsed>`
    for each unfinished task every `log_every_s` seconds while it runs."""

    def __init__(self, *columns: Any, log_every_s: float = LOG_EVERY_S, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.log_every_s = log_every_s
        self._stopped = threading.Event()
        self._logger: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        if self.disable or self.console.is_terminal or self.log_every_s <= 0:
            return
        self._stopped.clear()
        self._logger = threading.Thread(target=self._log, name="progress-log", daemon=True)
        self._logger.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._logger is not None:
            self._logger.join()
            self._logger = None
        super().stop()

    def _log(self) -> None:
        while not self._stopped.wait(self.log_every_s):
            for task in self.tasks:
                if task.finished or not task.visible or not task.started:
                    continue
                total = f"/{task.total:g}" if task.total is not None else ""
                elapsed = timedelta(seconds=int(task.elapsed or 0))
                self.console.print(
                    f"{task.description.strip()}: {task.completed:g}{total}, {elapsed}",
                    highlight=False,
                    markup=False,
                )


def progress_bar(width: int = 32, *extra_columns: Any, **kwargs: Any) -> Progress:
    """A rich Progress: description, bar, done/total, `extra_columns`, elapsed time (and,
    off a terminal, a plain line now and then: `LoggedProgress`)."""
    return LoggedProgress(
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        **kwargs,
    )
