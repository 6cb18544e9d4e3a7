"""Progress off a terminal (`orchestrator.progress`): rich draws nothing there until a bar
stops, so the bars print a plain line per unfinished task now and then."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from orchestrator.progress import progress_bar


def run_bar(console: Console, **kw) -> str:
    with progress_bar(20, console=console, log_every_s=0.05, **kw) as bar:
        done = bar.add_task("done early", total=1)
        bar.advance(done)
        task = bar.add_task("generating smollm2", total=10)
        for _ in range(4):
            bar.advance(task)
            time.sleep(0.06)
    return console.file.getvalue()


def test_off_a_terminal_each_unfinished_task_gets_a_plain_line_while_it_runs():
    text = run_bar(Console(file=io.StringIO(), width=80))
    lines = re.findall(r"^generating smollm2: (\d+)/10, 0:00:00$", text, re.M)
    assert len(lines) >= 2, text  # one every 0.05 s over ~0.24 s
    assert [int(n) for n in lines] == sorted(int(n) for n in lines) and int(lines[-1]) <= 4
    assert "done early:" not in text  # a finished task is not repeated


@pytest.mark.parametrize("kw", [{"disable": True}, {}])
def test_on_a_terminal_or_disabled_only_the_bar_itself(kw):
    console = Console(file=io.StringIO(), width=80, force_terminal=not kw)
    assert "generating smollm2:" not in run_bar(console, **kw)
