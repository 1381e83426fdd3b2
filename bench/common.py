"""Shared pieces of the benchmark sections: timing, comparisons, the data, the machine."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "git-commit-subject"
DATA_TASK = "commit-subject"
SPLITS = ("train", "dev", "test")
VERSIONED = ("prlm", "torch", "transformers", "trl", "rank-bm25", "numpy", "sentence-transformers", "accelerate")


class BenchError(RuntimeError):
    """A benchmark cannot run (missing data, bad option): one line for the user."""


def time_runs(work: Callable[[], object], repeats: int,
              setup: Callable[[], object] | None = None) -> tuple[list[float], object]:
    """Wall-clock seconds of `repeats` calls of `work` (or of `work(setup())`), and the last result.

    `setup` runs before each timed call, untimed: e.g. a fresh retriever, so
    every repetition starts from the same cold state.
    """
    times, result = [], None
    for _ in range(repeats):
        state = setup() if setup is not None else None
        start = time.perf_counter()
        result = work(state) if setup is not None else work()
        times.append(time.perf_counter() - start)
    return times, result


def measurement(label: str, times: Sequence[float], work: float, unit: str, **extra) -> dict:
    """One side of a comparison: its times, median and rate (`work` units per second at the median)."""
    median = statistics.median(times)
    return {"label": label, "times_s": [round(t, 6) for t in times], "median_s": round(median, 6),
            "rate": work / median if median > 0 else float("inf"), "unit": unit, **extra}


def comparison(name: str, baseline: dict, candidate: dict, target: float | None = None, **extra) -> dict:
    """Candidate against baseline: ratio of rates (higher is better), and the target ratio when there is one."""
    ratio = candidate["rate"] / baseline["rate"] if baseline["rate"] > 0 else float("inf")
    return {"name": name, "baseline": baseline, "candidate": candidate, "ratio": round(ratio, 3),
            "target": target, "target_met": None if target is None else ratio >= target, **extra}


def load_examples(data_dir: str | Path, splits: Sequence[str] = SPLITS):
    """The questions of the given splits of the benchmark data set, in file order."""
    from prlm.data import get_task, load_split

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BenchError(f"benchmark data not found at {data_dir}: the suite reads git-commit-subject from "
                         f"../shared/data relative to the repository root (or pass --data DIR)")
    task = get_task(DATA_TASK)
    return task, [ex for split in splits for ex in load_split(data_dir, split, task).examples]


def first_users(examples: Sequence, n_users: int) -> list:
    """Every question of the first `n_users` users (in order of first appearance)."""
    users = list(dict.fromkeys(ex.user_id for ex in examples))[:n_users]
    wanted = set(users)
    return [ex for ex in examples if ex.user_id in wanted]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what platform knows
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> dict:
    import torch

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }


def choose_sizes(args, full: dict, quick: dict, is_quick: bool) -> dict:
    """Sizes of a section: the command line's where given, else the quick or the full defaults."""
    chosen = dict(quick if is_quick else full)
    for name in chosen:
        value = getattr(args, name, None) if args is not None else None
        if value is not None:
            chosen[name] = value
    return chosen


def add_size_options(parser, full: dict, quick: dict, help_texts: dict) -> None:
    """One `--name` option per size, defaulting to the full size (the quick size under --quick)."""
    for name, value in full.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(value), default=None,
                            help=f"{help_texts[name]} (default {value}; {quick[name]} with --quick)")


def top_functions(profile_stats, n: int = 8) -> list[dict]:
    """The `n` functions with the most own time in a cProfile run: where the time goes."""
    total = profile_stats.total_tt or 1.0
    rows = sorted(profile_stats.stats.items(), key=lambda item: -item[1][2])[:n]
    out = []
    for (filename, line, function), (_, calls, own, cumulative, _) in rows:
        name = f"{function} ({Path(filename).name}:{line})" if line else function  # line 0: a builtin
        out.append({"function": name, "calls": calls, "own_s": round(own, 4),
                    "cumulative_s": round(cumulative, 4), "own_share": round(own / total, 3)})
    return out


# --- the machine's limits: what a step could cost at best ------------------------------------------------------

def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 matrix-multiply throughput (GFLOP/s) of square `size` matrices at torch's thread setting:
    the ceiling of compute-bound work (prefill, forward + backward)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # first call: allocation and kernel choice, not timed
    times, _ = time_runs(lambda: a @ b, repeats)
    return 2 * size**3 / statistics.median(times) / 1e9


def weight_stream_gbs(megabytes: int = 540, repeats: int = 5) -> float:
    """GB/s of a matrix-vector product over `megabytes` of fp32 weights (the policy's size by default):
    the ceiling of a decoding step, which reads every weight once to produce one token per row."""
    import torch

    hidden = 576  # SmolLM2-135M's width
    weights = torch.randn(megabytes * 2**20 // (4 * hidden), hidden)
    vector = torch.randn(hidden, 1)
    weights @ vector
    times, _ = time_runs(lambda: weights @ vector, repeats)
    return weights.numel() * 4 / statistics.median(times) / 1e9


def policy_shape(model) -> dict:
    """Parameter counts and bytes that the per-step bounds need."""
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    embedding = model.get_input_embeddings().weight
    body = total - embedding.numel() - (0 if head is embedding else head.numel())
    return {"params": total, "body_params": body, "head_params": head.numel(),
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
