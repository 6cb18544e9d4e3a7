"""What a person reads: `summary.json`, `report.md` (the tables and notes) and `chart.png`
(accuracy against calls per question), rewritten atomically from the results at the end
of a run, so they always describe whole results."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from evals.harness.spec import EvalSpec
from orchestrator.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from orchestrator.strategies import get_strategy

log = logging.getLogger(__name__)

#: Where a label may go around its point, in points (tried in order; then further out).
_OFFSETS = [(6, 4), (6, -11), (-6, 4), (-6, -11), (0, 10), (0, -17)]
ORACLE = "oracle (reference)"


def chart_png(summary: dict[str, Any], title: str, featured: Collection[str] = ()) -> bytes:
    """Accuracy against expert calls per question (`draw_chart`), as PNG bytes."""
    import io

    fig, _ = draw_chart(summary, title, featured)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def draw_chart(
    summary: dict[str, Any], title: str, featured: Collection[str] = ()
) -> tuple[Any, list[Any]]:
    """The chart and its point labels: one point per strategy (the `featured` ones, the
    product's own, in red; derived rows as grey crosses), single experts smaller and grey,
    the oracle as a dashed reference line. Labels are placed so that none overlaps
    another: each tries spots around its point, then further out with a leader line
    (several strategies often share a point, and every single expert sits at 1 call)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    oracle = summary.get(ORACLE)
    rows = [(n, s) for n, s in summary.items() if n != ORACLE]
    # strategies first: they get the best spots; single experts after, quieter
    rows.sort(key=lambda kv: (kv[0].startswith("single:"), -kv[1]["accuracy"]))
    for name, s in rows:
        single, derived = name.startswith("single:"), s.get("derived") is not None
        color = "tab:red" if name in featured else "tab:gray" if derived or single else "tab:blue"
        ax.scatter(
            s["calls_per_question"],
            s["accuracy"],
            marker="x" if derived else "o",
            s=22 if single else 60,
            color=color,
            alpha=0.7 if single else 1.0,
            zorder=3,
        )
    if oracle is not None:
        ax.axhline(oracle["accuracy"], color="tab:green", linestyle="--", linewidth=1, zorder=1)
        ax.text(
            1.0,
            oracle["accuracy"],
            f" oracle {oracle['accuracy']:.1f}",
            transform=ax.get_yaxis_transform(),
            va="center",
            ha="left",
            fontsize=8,
            color="tab:green",
        )
    ax.set_xlabel("LLM calls per question")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []  # boxes (display coordinates) of labels and points
    labels = []
    for name, s in rows:
        single = name.startswith("single:")
        xy = (s["calls_per_question"], s["accuracy"])
        style = {
            "fontsize": 7 if single else 8,
            "color": "dimgray" if single else "black",
            "textcoords": "offset points",
            "zorder": 4,
        }
        label = name.removeprefix("single:") if single else name
        text = ax.annotate(label, xy, xytext=_OFFSETS[0], **style)
        if _place(text, placed, renderer):
            # far from its point: drawn again with a thin line that shows whose it is (an
            # annotation takes its arrow only when made: `set(arrowprops=)` raises)
            at, ha = text.get_position(), text.get_horizontalalignment()
            text.remove()
            text = ax.annotate(label, xy, xytext=at, ha=ha, arrowprops=_LEADER, **style)
        placed.append(_box(text, renderer).expanded(1.04, 1.15))
        labels.append(text)
    return fig, labels


def _box(text: Any, renderer: Any) -> Any:
    """A label's text box, without its leader line (an annotation's own extent has it)."""
    from matplotlib.text import Text

    text.update_positions(renderer)  # where its offset puts it now
    return Text.get_window_extent(text, renderer)


#: the leader line of a label placed far from its point
_LEADER = {"arrowstyle": "-", "color": "0.6", "lw": 0.6}


def _place(text: Any, placed: list[Any], renderer: Any) -> bool:
    """Move `text` to the first spot around its point that overlaps no placed label;
    past the near spots, further up or down by a line at a time. True when it went past
    the near spots (it wants a leader line)."""
    candidates = list(_OFFSETS)
    for step in range(1, 40):
        for dx in (6, -6):
            candidates += [(dx, 4 + 11 * step), (dx, -11 - 11 * step)]
    for i, (dx, dy) in enumerate(candidates):
        text.set_position((dx, dy))
        text.set_horizontalalignment("left" if dx >= 0 else "right")
        box = _box(text, renderer)
        if not any(box.overlaps(other) for other in placed):
            return i >= len(_OFFSETS)
    return False


def report_md(summary: dict[str, Any], spec: EvalSpec, extra: dict[str, Any]) -> str:
    lines = [
        f"# Conclave eval: {spec.dataset} ({spec.split})",
        "",
        f"- date: {extra.get('date')}",
        f"- questions: {extra.get('questions')}; profiled on {extra.get('profile_questions')} "
        f"{spec.profile_split} questions ({extra.get('profile')})",
        f"- aggregator: {extra.get('aggregator')}; best single on validation: "
        f"{extra.get('best_single')}",
        f"- machine: {extra.get('machine')}",
        "",
        "| strategy | accuracy % | calls / q | expert calls / q | tokens / q | wall s | "
        "model loads | failed calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        failed = s.get("errors", 0)
        lines.append(
            f"| {name} | {s['accuracy']:.1f} | {s['calls_per_question']:g} | "
            f"{s['expert_calls_per_question']:g} | {s['tokens_per_question']:g} | "
            f"{s['seconds']:g} | {s['model_loads']} | "
            + (f"{failed} ({s['error_share']:.0%})" if failed else "0")
            + " |"
        )
    by_expert = {n: s["errors_by_expert"] for n, s in summary.items() if s.get("errors_by_expert")}
    if by_expert:
        lines += ["", "Failed expert calls (each error is in results.jsonl):", ""]
        lines += [
            f"- {n}: " + ", ".join(f"{ex} {k}" for ex, k in e.items()) for n, e in by_expert.items()
        ]
    cats = sorted({c for s in summary.values() for c in s["by_category"]})
    lines += ["", "## Accuracy per category (%)", ""]
    lines.append("| strategy | " + " | ".join(cats) + " |")
    lines.append("|---|" + "---:|" * len(cats))
    for name, s in summary.items():
        row = " | ".join(f"{s['by_category'].get(c, float('nan')):.0f}" for c in cats)
        lines.append(f"| {name} | {row} |")
    lines += [
        "",
        "Calls and tokens are each strategy's own cost. Experts answer greedily, so an "
        "expert's answer to a question is computed once per run and reused by later "
        "strategies: wall seconds count only the work a strategy added "
        "(reused calls per question: "
        + ", ".join(
            f"{n} {s['reused_per_question']:g}" for n, s in summary.items() if not s.get("derived")
        )
        + ").",
    ]
    resumed = {n: s["resumed"] for n, s in summary.items() if s.get("resumed")}
    if resumed:
        lines += [
            "",
            "Resumed: questions answered by an earlier, interrupted run of this directory "
            "(not in this run's wall seconds): "
            + ", ".join(f"{n} {k}" for n, k in resumed.items())
            + ".",
        ]
    notes = [f"- {n}: {s['derived']}" for n, s in summary.items() if s.get("derived")]
    if notes:
        lines += ["", "Rows without their own run:", "", *notes]
    lines += ["", "![accuracy against calls](chart.png)", ""]
    return "\n".join(lines)


def write_outputs(
    run_dir: Path, summary: dict[str, Any], spec: EvalSpec, extra: dict[str, Any]
) -> None:
    """summary.json, report.md and chart.png, each written atomically. A chart that
    cannot be drawn is logged and left out: the figures are in the other two, and a
    benchmark of many runs goes on to the next (a matplotlib upgrade once broke it at
    the end of every run, after all its answers)."""
    atomic_write_json(run_dir / "summary.json", {"strategies": summary, **extra})
    atomic_write_text(run_dir / "report.md", report_md(summary, spec, extra))
    title = f"{spec.dataset} {spec.split}: accuracy vs calls ({extra.get('questions')} questions)"
    featured = {s for s in spec.strategies if get_strategy(s).featured}
    try:
        png = chart_png(summary, title, featured)
    except Exception as exc:  # matplotlib's errors have no common base
        log.warning(
            "chart.png not drawn in %s (%s: %s); the figures are in summary.json and report.md",
            run_dir,
            type(exc).__name__,
            exc,
        )
        return
    atomic_write_bytes(run_dir / "chart.png", png)
