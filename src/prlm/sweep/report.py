"""The sweep's report, from its run folders only: `cells.csv` (one tidy row per
evaluation), `plots/` (ROUGE-L against k per retriever, bootstrap bands),
`report.md` (tables, paired comparisons, robustness summary and a reading
generated from the numbers). Nothing in it is written by hand.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prlm.evaluation import load_run, paired_bootstrap
from prlm.io import atomic_write_text
from prlm.sweep.grid import GRID_METHODS, Cell, SweepConfig, eval_options, sweep_cells

METRIC = "rougeL"


def section_markers(cfg: SweepConfig) -> tuple[str, str]:
    """Each sweep folder owns its section, so several sweeps can report into one file."""
    name = Path(cfg.out).name
    return f"<!-- prlm sweep {name}: begin -->", f"<!-- prlm sweep {name}: end -->"


@dataclass
class Result:
    cell: Cell
    summary: dict
    scores: dict[str, float]
    """Per-example ROUGE-L by question id."""
    low: float
    high: float
    """95% bootstrap interval of the mean ROUGE-L."""

    @property
    def mean(self) -> float:
        return self.summary["metrics"][METRIC]


def mean_interval(values, samples: int, seed: int) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, values.size, size=(samples, values.size))
    low, high = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def load_results(cfg: SweepConfig) -> list[Result]:
    """Finished cells whose recorded config is the sweep's current one (stale folders are left out)."""
    results = []
    for cell in sweep_cells(cfg):
        folder = cell.folder(Path(cfg.out))
        if not (folder / "summary.json").is_file():
            continue
        summary, rows = load_run(folder)
        expected = eval_options(cfg, cell)
        if any(summary["config"].get(key) != value for key, value in expected.items()):
            continue
        scores = {r["id"]: r["metrics"][METRIC] for r in rows}
        low, high = mean_interval(list(scores.values()), cfg.bootstrap_samples, cfg.seed)
        results.append(Result(cell, summary, scores, low, high))
    return results


# --- tables --------------------------------------------------------------------

def tidy_rows(results: list[Result]) -> list[dict]:
    rows = []
    for r in results:
        s, versions = r.summary, r.summary["environment"]["versions"]
        rows.append({
            "method": r.cell.method, "retriever": r.cell.retriever, "k": r.cell.k, "prompt": r.cell.prompt,
            "model": r.cell.model, "split": s["split"], "n": s["n"],
            **{key: round(value, 6) for key, value in s["metrics"].items()},
            "rougeL_low": round(r.low, 6), "rougeL_high": round(r.high, 6),
            "format_rate": s.get("format_rate", ""), "forced_answers": s.get("forced_answers", ""),
            "empty_answers": s["empty_answers"], "wall_time_s": s["wall_time_s"], "seed": s["config"]["seed"],
            "max_new_tokens": s["config"]["max_new_tokens"], "max_prompt_tokens": s["config"]["max_prompt_tokens"],
            "finished": s["finished"], "run": str(r.cell.folder(Path("."))),
            **{f"version_{pkg}": v for pkg, v in versions.items()}, "python": s["environment"]["python"],
        })
    return rows


def csv_text(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def compare(a: Result, b: Result, cfg: SweepConfig):
    """Paired bootstrap of B minus A on ROUGE-L over their shared questions."""
    ids = sorted(set(a.scores) & set(b.scores))
    return paired_bootstrap([a.scores[i] for i in ids], [b.scores[i] for i in ids], metric=METRIC,
                            samples=cfg.bootstrap_samples, seed=cfg.seed)


def verdict(result) -> str:
    if result.low > 0:
        return "higher"
    if result.high < 0:
        return "lower"
    return "no clear difference"


def by_cell(results: list[Result]) -> dict[tuple[str, str, int], Result]:
    return {(r.cell.method, r.cell.retriever, r.cell.k): r for r in results}


def paired_grid(cfg: SweepConfig, results: list[Result]) -> list[tuple[str, int, object]]:
    """prlm against rag in every grid cell where both ran."""
    table = by_cell(results)
    return [(ret, k, compare(table[("rag", ret, k)], table[("prlm", ret, k)], cfg))
            for ret, k in cfg.grid() if ("rag", ret, k) in table and ("prlm", ret, k) in table]


# --- robustness ------------------------------------------------------------------

def spreads(means: dict[tuple[str, int], float]) -> tuple[dict[int, float], dict[str, float]]:
    """Max minus min across retrievers at each k, and across k at each retriever (2+ values only)."""
    across_retrievers, across_k = {}, {}
    for k in sorted({k for _, k in means}):
        values = [v for (_, kk), v in means.items() if kk == k]
        if len(values) > 1:
            across_retrievers[k] = max(values) - min(values)
    for ret in dict.fromkeys(r for r, _ in means):
        values = [v for (rr, _), v in means.items() if rr == ret]
        if len(values) > 1:
            across_k[ret] = max(values) - min(values)
    return across_retrievers, across_k


def _family_means(means) -> dict[str, float | None]:
    across_r, across_k = spreads(means)
    return {"across_retrievers": float(np.mean(list(across_r.values()))) if across_r else None,
            "across_k": float(np.mean(list(across_k.values()))) if across_k else None}


def robustness(cfg: SweepConfig, results: list[Result]) -> dict:
    """Spreads per grid method, and a bootstrap (questions resampled jointly across
    cells) of RAG's mean spread minus PrLM's in each family."""
    grid = cfg.grid()
    per_method = {}
    for method in GRID_METHODS:
        cells = {(r.cell.retriever, r.cell.k): r for r in results if r.cell.method == method and
                 (r.cell.retriever, r.cell.k) in grid}
        if cells:
            means = {key: r.mean for key, r in cells.items()}
            across_r, across_k = spreads(means)
            per_method[method] = {"cells": cells, "across_retrievers": across_r, "across_k": across_k,
                                  "mean_rougeL": float(np.mean(list(means.values()))),
                                  **{f"mean_{k}": v for k, v in _family_means(means).items()}}
    out = {"methods": per_method, "difference": {}}
    if {"rag", "prlm"} <= set(per_method):
        shared = sorted(set(per_method["rag"]["cells"]) & set(per_method["prlm"]["cells"]))
        ids = sorted(set.intersection(*(set(per_method[m]["cells"][c].scores) for m in ("rag", "prlm")
                                        for c in shared)))
        rng = np.random.default_rng(cfg.seed)
        idx = rng.integers(0, len(ids), size=(cfg.bootstrap_samples, len(ids)))
        boot = {}
        for method in ("rag", "prlm"):
            resampled = {c: np.array([per_method[method]["cells"][c].scores[i] for i in ids])[idx].mean(axis=1)
                         for c in shared}
            boot[method] = [_family_means({c: v[b] for c, v in resampled.items()})
                            for b in range(cfg.bootstrap_samples)]
        for family in ("across_retrievers", "across_k"):
            if boot["rag"] and boot["rag"][0][family] is not None:
                diffs = np.array([r[family] - p[family] for r, p in zip(boot["rag"], boot["prlm"])])
                point = _family_means({c: per_method["rag"]["cells"][c].mean for c in shared})[family] - \
                    _family_means({c: per_method["prlm"]["cells"][c].mean for c in shared})[family]
                low, high = np.percentile(diffs, [2.5, 97.5])
                out["difference"][family] = {"diff": point, "low": float(low), "high": float(high)}
    return out


# --- plots -----------------------------------------------------------------------

def plot_retriever(ax, cfg: SweepConfig, results: list[Result], retriever: str) -> None:
    table = by_cell(results)
    for method in GRID_METHODS:
        points = [(k, table[(method, retriever, k)]) for k in cfg.ks if (method, retriever, k) in table]
        if not points:
            continue
        ks = [k for k, _ in points]
        line, = ax.plot(ks, [r.mean for _, r in points], marker="o", label=method)
        ax.fill_between(ks, [r.low for _, r in points], [r.high for _, r in points], color=line.get_color(),
                        alpha=0.2, linewidth=0)
    if ("no-profile", "none", 0) in table:
        base = table[("no-profile", "none", 0)]
        ax.axhline(base.mean, color="grey", linestyle="--", label="no-profile")
        ax.axhspan(base.low, base.high, color="grey", alpha=0.12, linewidth=0)
    if retriever == cfg.main_retriever:
        extras = [r for r in results if r.cell.method not in GRID_METHODS + ("no-profile",)]
        for offset, r in enumerate(extras):
            ax.errorbar(r.cell.k * 2 ** (0.1 * (offset + 1)), r.mean, yerr=[[r.mean - r.low], [r.high - r.mean]],
                        fmt="s", capsize=3, label=r.cell.method)
    ax.set_xscale("log", base=2)
    ax.set_xticks(cfg.ks, [str(k) for k in cfg.ks])
    ax.set_xlabel("k (retrieved entries)")
    ax.set_title(retriever)


def write_plots(cfg: SweepConfig, results: list[Result], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    retrievers = [r for r in dict.fromkeys(cfg.retrievers + [cfg.main_retriever])
                  if any(res.cell.retriever == r for res in results)]
    if not retrievers or len(cfg.ks) < 2:
        return []  # the plots are against k
    folder.mkdir(parents=True, exist_ok=True)
    n = next(iter(results)).summary["n"]
    paths = []
    fig, axes = plt.subplots(1, len(retrievers), figsize=(3.2 * len(retrievers) + 1, 3.4), sharey=True, squeeze=False)
    for ax, retriever in zip(axes[0], retrievers):
        plot_retriever(ax, cfg, results, retriever)
    axes[0][0].set_ylabel("ROUGE-L F1 (95% bootstrap band)")
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"{cfg.task} / {cfg.split} (n={n})", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    paths.append(folder / "rougeL-vs-k.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    for retriever in retrievers:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        plot_retriever(ax, cfg, results, retriever)
        ax.set_ylabel("ROUGE-L F1")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(folder / f"rougeL-vs-k-{retriever}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


# --- markdown ----------------------------------------------------------------------

def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ci(result) -> str:
    return f"{result.diff:+.4f} [{result.low:+.4f}, {result.high:+.4f}]"


def reading(cfg: SweepConfig, results: list[Result], grid_pairs, robust: dict, main_pairs) -> list[str]:
    """What the numbers say, as sentences built from them."""
    lines = []
    n = results[0].summary["n"]
    lines.append(f"{len(results)} evaluations on {n} questions of the {cfg.split} split; every interval is a "
                 f"95% bootstrap interval over questions ({cfg.bootstrap_samples} resamples).")
    if grid_pairs:
        above = sum(p.diff > 0 for _, _, p in grid_pairs)
        sig_up = sum(p.low > 0 for _, _, p in grid_pairs)
        sig_down = sum(p.high < 0 for _, _, p in grid_pairs)
        lines.append(f"prlm is above rag in {above} of {len(grid_pairs)} cells; the interval of the difference "
                     f"is above zero in {sig_up} and below zero in {sig_down}.")
    methods = robust["methods"]
    for family, label in (("across_retrievers", "across retrievers at a fixed k"),
                          ("across_k", "across k at a fixed retriever")):
        parts = [f"{m} {_f(methods[m][f'mean_{family}'])}" for m in GRID_METHODS if m in methods]
        if parts and any(methods[m][f"mean_{family}"] is not None for m in methods):
            line = f"Mean spread of ROUGE-L {label}: " + ", ".join(parts) + "."
            diff = robust["difference"].get(family)
            if diff:
                line += (f" RAG's minus PrLM's: {diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
                         + (" (within noise)." if diff["low"] <= 0 <= diff["high"] else "."))
            lines.append(line)
    lines.append(claim_sentence(methods, grid_pairs, robust))
    relative = relative_spread_sentence(methods)
    if relative:
        lines.append(relative)
    table = by_cell(results)
    if ("no-profile", "none", 0) in table:
        base = table[("no-profile", "none", 0)]
        for method in GRID_METHODS:
            cells = [r for r in results if r.cell.method == method]
            if cells:
                lines.append(f"{method} is above no-profile ({base.mean:.4f}) in "
                             f"{sum(r.mean > base.mean for r in cells)} of {len(cells)} cells.")
    for name, result in main_pairs:
        if name == "prlm vs sft":
            lines.append(f"Main cell ({cfg.main_retriever}, k={cfg.main_k}): prlm minus sft = {_ci(result)}: "
                         + {"higher": "RL with explicit reasoning beats supervised tuning on the same data.",
                            "lower": "supervised tuning on the same data beats RL with explicit reasoning.",
                            "no clear difference": "no clear difference between RL with explicit reasoning "
                                                   "and supervised tuning on the same data."}[verdict(result)])
        elif name.endswith(" vs prlm") and name.split(" vs ")[0] not in GRID_METHODS + ("no-profile", "sft"):
            wording = {"higher": "above", "lower": "below", "no clear difference": "no clear difference from"}
            lines.append(f"Ablation {name.split(' vs ')[0]} minus prlm = {_ci(result)}: "
                         f"{wording[verdict(result)]} PrLM with its full reward.")
    formats = [r.summary["format_rate"] for r in results if "format_rate" in r.summary]
    if formats:
        forced = sum(r.summary.get("forced_answers", 0) for r in results) / \
            sum(r.summary["n"] for r in results if "format_rate" in r.summary)
        lines.append(f"Reasoning-prompt runs wrote the <think>/<answer> format in {np.mean(formats):.1%} of "
                     f"completions on average; {forced:.1%} of their answers were forced after the reasoning "
                     f"ran out of tokens.")
    return lines


def claim_sentence(methods: dict, grid_pairs, robust: dict) -> str:
    """The paper's robustness claim judged from intervals only: "holds" when every interval says so,
    "does not hold" when one says the opposite, else "not shown either way". Point estimates alone
    never decide, and nothing is normalised here (relative spreads are reported separately)."""
    if not ({"rag", "prlm"} <= set(methods) and grid_pairs):
        return "The paper's robustness claim cannot be judged: the sweep lacks rag or prlm cells."
    families = [f for f in ("across_retrievers", "across_k") if f in robust["difference"]]
    if not families:
        return ("The paper's robustness claim cannot be judged: spreads need at least two retrievers or two "
                "values of k.")
    # difference = RAG's spread minus PrLM's: above zero means PrLM moves less.
    verdicts = {f: _interval_verdict(robust["difference"][f]["low"], robust["difference"][f]["high"])
                for f in families}
    above = sum(p.low > 0 for _, _, p in grid_pairs)
    below = sum(p.high < 0 for _, _, p in grid_pairs)
    cells = len(grid_pairs)
    parts = [f"PrLM's spread {f.replace('_', ' ')} is {verdicts[f]} RAG's "
             f"(RAG minus PrLM {robust['difference'][f]['diff']:+.4f} "
             f"[{robust['difference'][f]['low']:+.4f}, {robust['difference'][f]['high']:+.4f}])" for f in families]
    parts.append(f"PrLM is above RAG with an interval above zero in {above} of {cells} cells and below it "
                 f"with an interval below zero in {below}")
    if all(v == "smaller than" for v in verdicts.values()) and above > cells / 2:
        verdict = "holds"
    elif any(v == "larger than" for v in verdicts.values()) or below > cells / 2:
        verdict = "does not hold"
    else:
        verdict = "is not shown either way"
    return f"The paper's robustness claim {verdict} in our setting: " + "; ".join(parts) + "."


def _interval_verdict(low: float, high: float) -> str:
    if low > 0:
        return "smaller than"
    if high < 0:
        return "larger than"
    return "not distinguishable from"


def relative_spread_sentence(methods: dict) -> str | None:
    """Spreads as a share of each method's level: a method near the floor has little room to move,
    so a small absolute spread alone does not make it robust."""
    present = [m for m in GRID_METHODS if m in methods and methods[m]["mean_rougeL"] > 0]
    parts = []
    for family, label in (("across_retrievers", "across retrievers"), ("across_k", "across k")):
        values = [f"{m} {methods[m][f'mean_{family}'] / methods[m]['mean_rougeL']:.0%}" for m in present
                  if methods[m][f"mean_{family}"] is not None]
        if values:
            parts.append(f"{label} {', '.join(values)}")
    if not parts:
        return None
    levels = ", ".join(f"{m} {methods[m]['mean_rougeL']:.4f}" for m in present)
    return (f"Relative to each method's mean ROUGE-L over its cells ({levels}), the mean spreads are: "
            + "; ".join(parts) + ". A method near the floor has little room to move, so read the absolute "
            "spreads with its level.")


def main_cell_pairs(cfg: SweepConfig, results: list[Result]) -> list[tuple[str, object]]:
    table = by_cell(results)
    main = {r.cell.method: r for r in results if (r.cell.retriever, r.cell.k) == cfg.main_cell}
    if ("no-profile", "none", 0) in table:
        main["no-profile"] = table[("no-profile", "none", 0)]
    wanted = [("no-profile", "rag"), ("no-profile", "prlm"), ("rag", "prlm"), ("rag", "sft"), ("sft", "prlm")]
    wanted += [("prlm", name) for name in cfg.extra_models]
    return [(f"{b} vs {a}", compare(main[a], main[b], cfg)) for a, b in wanted if a in main and b in main]


def checkpoint_rows(cfg: SweepConfig) -> list[str]:
    """Where each trained model comes from: steps, reward weights, training wall time when recorded."""
    models = {"prlm": cfg.prlm_model, **({"sft": cfg.sft_model or str(Path(cfg.out) / "sft" / "final")}
                                          if cfg.has_sft else {}), **cfg.extra_models}
    lines = ["| model | folder | steps | w_acc / w_fmt / w_pers | training wall time |", "|---|---|---|---|---|"]
    for name, folder in models.items():
        if not folder:
            continue
        parent = Path(folder).parent
        info = {}
        for candidate in ("train_summary.json", "sft_summary.json"):
            if (parent / candidate).is_file():
                info = json.loads((parent / candidate).read_text(encoding="utf-8"))
        wall = info.get("wall_time_s")
        marker = parent.parent / "stages" / "train.json"
        if wall is None and marker.is_file():
            wall = json.loads(marker.read_text(encoding="utf-8")).get("wall_time_s")
        c = info.get("config", {})
        weights = " / ".join(str(c.get(w, "-")) for w in ("w_acc", "w_fmt", "w_pers")) if "w_acc" in c else "-"
        lines.append(f"| {name} | `{folder}` | {info.get('steps', '-')} | {weights} | "
                     f"{'-' if wall is None else f'{wall:,.0f} s'} |")
    return lines


def render_markdown(cfg: SweepConfig, results: list[Result], plots: list[Path], plot_prefix: str,
                    level: int = 1) -> str:
    h = "#" * level
    if not results:
        return f"{h} Robustness sweep\n\nNo finished cells yet in `{cfg.out}`.\n"
    grid_pairs = paired_grid(cfg, results)
    robust = robustness(cfg, results)
    main_pairs = main_cell_pairs(cfg, results)
    first = results[0].summary
    versions = ", ".join(f"{k} {v}" for k, v in first["environment"]["versions"].items() if v)
    subset = f" (the split's first {first['n']} questions: limit={cfg.limit})" if cfg.limit else ""
    grid = cfg.grid()
    size = f"{len(grid)} cell{'s' if len(grid) != 1 else ''} x {first['n']} questions"
    lines = [f"{h} Robustness sweep: {cfg.task}, {cfg.split} split, {size}", "",
             f"Generated by `prlm sweep` from the run folders in `{cfg.out}/` (every cell: `cells/METHOD/"
             f"RETRIEVER-kK/summary.json` holds its config, seed and versions; `cells.csv` is the tidy table). "
             f"Data `{cfg.data}`, n = {first['n']}{subset}, base model `{cfg.model}`, greedy decoding, prompts cut at "
             f"{cfg.max_prompt_tokens} tokens, {cfg.max_new_tokens} new tokens ({cfg.prlm_max_new_tokens} with "
             f"the reasoning prompt), seed {cfg.seed}. Python {first['environment']['python']}, {versions}.", ""]
    lines += [f"{h}# Commands and wall times", "", "```bash"]
    commands_file = Path(cfg.out) / "commands.jsonl"
    if commands_file.is_file():
        for row in map(json.loads, commands_file.read_text(encoding="utf-8").splitlines()):
            threads = f"{row['threads']} torch thread(s), " if "threads" in row else ""
            lines.append(f"{row['command']}   # {row['started']}, {row['wall_time_s']:,.0f} s, {threads}"
                         f"{len(row['ran'])} stage(s) ran")
    lines += ["```", "", f"Evaluation wall time, all cells: {sum(r.summary['wall_time_s'] for r in results):,.0f} s.",
              "", "Trained models:", ""] + checkpoint_rows(cfg)
    lines += ["", f"{h}# Main cell ({cfg.main_retriever}, k={cfg.main_k})", "",
              "| method | model | ROUGE-1 | ROUGE-L | ROUGE-L 95% interval | format rate | wall time |",
              "|---|---|---|---|---|---|---|"]
    main = [r for r in results if (r.cell.retriever, r.cell.k) == cfg.main_cell or r.cell.method == "no-profile"]
    for r in main:
        fmt = r.summary.get("format_rate")
        lines.append(f"| {r.cell.method} | `{r.cell.model}` | {r.summary['metrics']['rouge1']:.4f} | {r.mean:.4f} | "
                     f"[{r.low:.4f}, {r.high:.4f}] | {'-' if fmt is None else f'{fmt:.3f}'} | "
                     f"{r.summary['wall_time_s']:,.0f} s |")
    if main_pairs:
        lines += ["", "Paired bootstrap in the main cell, ROUGE-L, B minus A [95% interval]:", ""]
        lines += [f"- {name}: {_ci(p)} ({verdict(p)})" for name, p in main_pairs]
    table = by_cell(results)
    grid_methods = [m for m in GRID_METHODS if any(r.cell.method == m for r in results)]
    lines += ["", f"{h}# ROUGE-L in every cell", "",
              "| retriever | k | " + " | ".join(grid_methods) + " | prlm - rag [95% interval] |",
              "|---|---|" + "---|" * (len(grid_methods) + 1)]
    pair_of = {(ret, k): p for ret, k, p in grid_pairs}
    order = list(dict.fromkeys(cfg.retrievers + [cfg.main_retriever]))
    for ret, k in sorted(cfg.grid(), key=lambda cell: (order.index(cell[0]), cell[1])):
        values = [table.get((m, ret, k)) for m in grid_methods]
        if not any(values):
            continue
        cells = [f"{v.mean:.4f} [{v.low:.4f}, {v.high:.4f}]" if v else "-" for v in values]
        pair = pair_of.get((ret, k))
        interval = _ci(pair) + " " + verdict(pair) if pair else "-"
        lines.append(f"| {ret} | {k} | " + " | ".join(cells) + f" | {interval} |")
    if ("no-profile", "none", 0) in table:
        base = table[("no-profile", "none", 0)]
        lines += ["", f"no-profile (no retrieval): {base.mean:.4f} [{base.low:.4f}, {base.high:.4f}]."]
    lines += [""] + [f"![ROUGE-L against k]({plot_prefix}{p.name})" for p in plots[:1]]
    if len(plots) > 1:
        lines += ["", "Per retriever: " + ", ".join(f"[{p.stem.split('-')[-1]}]({plot_prefix}{p.name})"
                                                     for p in plots[1:])]
    lines += ["", f"{h}# Robustness summary", "",
              "Spread = max minus min of ROUGE-L. Across retrievers: at each k over the retrievers; across k: at "
              "each retriever over the values of k.", ""]
    methods = robust["methods"]
    if not any(m["across_retrievers"] or m["across_k"] for m in methods.values()):
        lines += ["No spreads: they need at least two retrievers or two values of k in the grid."]
    else:
        ks = sorted({k for m in methods.values() for k in m["across_retrievers"]})
        rets = list(dict.fromkeys(r for m in methods.values() for r in m["across_k"]))
        lines += ["| method | " + " | ".join(f"k={k}" for k in ks) + " | mean across retrievers | "
                  + " | ".join(rets) + " | mean across k |",
                  "|---|" + "---|" * (len(ks) + len(rets) + 2)]
        for name, m in methods.items():
            lines.append(f"| {name} | " + " | ".join(_f(m["across_retrievers"].get(k)) for k in ks)
                         + f" | {_f(m['mean_across_retrievers'])} | "
                         + " | ".join(_f(m["across_k"].get(r)) for r in rets) + f" | {_f(m['mean_across_k'])} |")
    lines += ["", f"{h}# Reading (generated from the numbers above)", ""]
    lines += [f"- {sentence}" for sentence in reading(cfg, results, grid_pairs, robust, main_pairs)]
    return "\n".join(lines) + "\n"


def write_sweep_report(cfg: SweepConfig, into: str | None = None) -> str:
    """cells.csv, plots/ and report.md in the sweep folder; with `into`, the same
    report replaces the sweep section of that markdown file (plots copied beside it)."""
    out = Path(cfg.out)
    results = load_results(cfg)
    atomic_write_text(out / "cells.csv", csv_text(tidy_rows(results)))
    plots = write_plots(cfg, results, out / "plots") if results else []
    text = render_markdown(cfg, results, plots, "plots/")
    atomic_write_text(out / "report.md", text)
    if into:
        insert_section(Path(into), cfg, results, plots)
    return text


def insert_section(target: Path, cfg: SweepConfig, results: list[Result], plots: list[Path]) -> None:
    name = Path(cfg.out).name
    images = target.parent / "img" / name
    for stale in images.glob("*.png"):  # the section's images are this report's only
        stale.unlink()
    if plots:
        images.mkdir(parents=True, exist_ok=True)
    for plot in plots:
        shutil.copyfile(plot, images / plot.name)
    begin, end = section_markers(cfg)
    section = f"{begin}\n{render_markdown(cfg, results, plots, f'img/{name}/', level=2)}{end}\n"
    old = target.read_text(encoding="utf-8") if target.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") + section
    atomic_write_text(target, new)
