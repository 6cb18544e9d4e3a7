"""`conclave eval`: profile the experts on a validation set, answer a test set with every
strategy, and write a run directory a person can read at a glance.

    run_dir/
      run.json        what was asked (dataset, split, strategies, seed, ...) and the config
      results.jsonl   one line per (strategy, question): keywords, chosen experts, their
                      answers, final answer, gold, correct; appended chunk by chunk
      summary.json    strategy -> accuracy, calls, tokens, seconds, model loads
      report.md       the tables, per-category accuracy, and the chart
      chart.png       accuracy against expert calls per question, one point per strategy

Resumable: results are appended in chunks, each written with one `write` and fsynced, so a
killed run leaves whole chunks and at most one partial line, which the next run drops.
Running again with the same run directory skips every (strategy, question) already
there. `summary.json`, `report.md` and `chart.png` are rewritten atomically from
`results.jsonl` at the end, so they always describe whole results.

Profiling is cached under `<cache>/profiles/<key>`: the key hashes the experts' configs
(and their model files' names, sizes and times), the routing settings and the validation
items, so a repeat run reuses it and any change profiles again. Only a run with a strategy
that reads the profile (`Strategy.needs_profile`) profiles at all.

Each expert alone and the per-category oracle come from the answers of the first strategy
in the run that asks every expert every question (`Strategy.asks_every_expert`: majority,
among the built-ins), so they cost no extra calls; the oracle picks the best expert per
category on the test split itself and is an upper reference, not a strategy.

Modules, by job: `spec` (what a run is asked, which strategies it may run), `rundir` (the
run directory, `run.json`, `results.jsonl` rows, resume), `run` (the strategy loop over
chunks, `run_eval`, progress bars), `summary` (`StrategySummary`, `summarize`), `report`
(`report.md`, `chart.png`).
"""

from evals.harness.report import chart_png, report_md, write_outputs
from evals.harness.run import machine, run_eval, run_strategies
from evals.harness.rundir import open_run_dir, result_row
from evals.harness.spec import DEFAULT_STRATEGIES, EvalSpec, check_strategies
from evals.harness.summary import StrategySummary, summarize

__all__ = [
    "DEFAULT_STRATEGIES",
    "EvalSpec",
    "StrategySummary",
    "chart_png",
    "check_strategies",
    "machine",
    "open_run_dir",
    "report_md",
    "result_row",
    "run_eval",
    "run_strategies",
    "summarize",
    "write_outputs",
]
