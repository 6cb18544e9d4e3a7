"""What a person reads: `summary.json`, `report.md` (the tables and notes) and `chart.png`
(accuracy against calls per question), rewritten atomically from the results at the end
of a run, so they always describe whole results."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from evals.harness.spec import EvalSpec
from orchestrator.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from orchestrator.strategies import get_strategy


def chart_png(summary: dict[str, Any], title: str, featured: Collection[str] = ()) -> bytes:
    """Accuracy against expert calls per question, one labelled point per row; the
    `featured` strategies (the product's own) in red, derived rows as grey crosses."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, s in summary.items():
        derived = s.get("derived") is not None
        ax.scatter(
            s["calls_per_question"],
            s["accuracy"],
            marker="o" if not derived else "x",
            s=60,
            color="tab:red" if name in featured else "tab:gray" if derived else "tab:blue",
        )
        ax.annotate(
            name,
            (s["calls_per_question"], s["accuracy"]),
            fontsize=8,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("LLM calls per question")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


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
    """summary.json, report.md and chart.png, each written atomically."""
    atomic_write_json(run_dir / "summary.json", {"strategies": summary, **extra})
    atomic_write_text(run_dir / "report.md", report_md(summary, spec, extra))
    title = f"{spec.dataset} {spec.split}: accuracy vs calls ({extra.get('questions')} questions)"
    featured = {s for s in spec.strategies if get_strategy(s).featured}
    atomic_write_bytes(run_dir / "chart.png", chart_png(summary, title, featured))
