"""Reports from run folders: a comparison table, bootstraps and two plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prlm.evaluation import compare_runs, load_run, summary_markdown
from prlm.io import atomic_write_text, read_jsonl

PLOTTED = ("rouge1", "rougeL")


def bar_chart(summaries: Mapping[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(PLOTTED)
    for j, metric in enumerate(PLOTTED):
        values = [summaries[n]["metrics"][metric] for n in names]
        bars = ax.bar([i + j * width for i in range(len(names))], values, width, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([i + width * (len(PLOTTED) - 1) / 2 for i in range(len(names))], names)
    ax.set_ylabel("F1")
    first = next(iter(summaries.values()))
    ax.set_title(f"{first['task']} / {first['split']} (n={first['n']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reward_curve(train_log: Path, path: Path) -> bool:
    """Mean reward per step and each reward term; False when there is no log."""
    if not train_log.is_file():
        return False
    rows = [r for r in read_jsonl(train_log) if "reward" in r]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["reward"] for r in rows], label="reward (weighted sum)", linewidth=2)
    for key in sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key.split("/")[1], alpha=0.7)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean over completions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(out: Path, runs: Mapping[str, Path], comparisons: list[tuple[str, str]],
                 train_log: Path | None = None) -> str:
    """report.md, metrics.png and reward_curve.png in `out`; returns the markdown."""
    summaries = {name: load_run(path)[0] for name, path in runs.items()}
    for name, summary in summaries.items():
        summary["name"] = name
    lines = ["# PrLM study", "", summary_markdown(list(summaries.values()))]
    for name, summary in summaries.items():
        if "format_rate" in summary:
            lines.append(f"- format rate of `{name}` (completions in `<think>..</think><answer>..</answer>`): "
                         f"{summary['format_rate']:.3f}")
    lines += ["", "Paired bootstrap (1000 resamples, 95% interval):", ""]
    for a, b in comparisons:
        for result in compare_runs(runs[a], runs[b]):
            if result.metric in PLOTTED:
                rel = result.diff / result.mean_a if result.mean_a else float("nan")
                lines.append(f"- {b} vs {a}, {result.line()}; relative {rel:+.1%}")
    bar_chart(summaries, out / "metrics.png")
    lines += ["", "![metrics](metrics.png)"]
    if train_log is not None and reward_curve(train_log, out / "reward_curve.png"):
        lines += ["", "![training reward](reward_curve.png)"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", text)
    return text
