"""LaMP's metrics, the paired bootstrap, and run folders.

ROUGE is computed as LaMP does: `rouge_score` with its default tokenizer, no
stemming, F1, predictions matched to golds by id, mean over examples. Two other
ways of computing it (`ROUGE_CHOICES`, the `rouge` option of evaluation and of
the accuracy reward) put a number beside the paper's (docs/paper-recipe.md):

- `lamp`: the same per-example scores, and each mean reported as LaMP's own
  evaluator reports it (LaMP-Benchmark/LaMP, eval/evaluation.py, through
  `evaluate`'s rouge): the median of 1,000 bootstrap means
  (`rouge_score.scoring.BootstrapAggregator`), seeded here (LaMP's is not);
- `authors`: the PrLM release's (Personal_RAG/metrics/eval_metrics.py and
  Model_Train/src/open_r1/rewards.py, `compute_metric_bleu_rouge`): both texts
  lower-cased, cut into `jieba` tokens joined by spaces (spaces and
  punctuation become tokens), scored by `rouge_chinese` (unique n-grams,
  summary-level ROUGE-L), 0 when either side has no token, mean over examples.
  It needs the optional packages jieba and rouge-chinese (`pip install
  'prlm[paper-rouge]'`).
"""

from __future__ import annotations

import gzip
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from prlm import PrlmError
from prlm.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
ROUGE_CHOICES = ("rouge-score", "lamp", "authors")
ROUGE_HELP = ("How ROUGE is computed: 'rouge-score' (LaMP's tokens and per-example F1, mean over examples), 'lamp' "
              "(the same scores, each mean reported as LaMP's evaluator does: the median of 1,000 bootstrap means), "
              "'authors' (the PrLM release's: lower-cased jieba tokens scored by rouge_chinese; needs pip install "
              "'prlm[paper-rouge]'). docs/paper-recipe.md.")
LAMP_BOOTSTRAP_SAMPLES = 1000  # rouge_score's BootstrapAggregator default, which `evaluate`'s rouge uses


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=False)


def check_rouge_choice(name: str, value: str, choices: tuple = ROUGE_CHOICES) -> None:
    """Refuse an unknown choice, or 'authors' where jieba and rouge-chinese are not installed (before any work)."""
    if value not in choices:
        raise PrlmError(f"{name}='{value}' is not valid; use one of: {', '.join(choices)}")
    if value == "authors":
        import importlib.util

        missing = [pkg for pkg, module in (("jieba", "jieba"), ("rouge-chinese", "rouge_chinese"))
                   if importlib.util.find_spec(module) is None]
        if missing:
            raise PrlmError(f"{name}: authors needs {' and '.join(missing)}: pip install 'prlm[paper-rouge]', or "
                            f"use {name}: rouge-score")


def rouge(prediction: str, gold: str, how: str = "rouge-score") -> dict[str, float]:
    """F1 of ROUGE-1, ROUGE-2 and ROUGE-L for one example (LaMP strips both); `how`: one of `ROUGE_CHOICES`
    ('lamp' differs from 'rouge-score' only in how means are reported, `lamp_mean`)."""
    if how == "authors":
        return authors_rouge(prediction, gold)
    if how not in ROUGE_CHOICES:
        raise PrlmError(f"rouge='{how}' is not valid; use one of: {', '.join(ROUGE_CHOICES)}")
    scores = _scorer().score(gold.strip(), prediction.strip())
    return {key: scores[key].fmeasure for key in ROUGE_KEYS}


@lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary announcement would go to stderr on every run
    return jieba


def authors_rouge(prediction: str, gold: str) -> dict[str, float]:
    """The PrLM release's ROUGE F of one example (module docstring, `authors`)."""
    from rouge_chinese import Rouge

    jieba = _jieba()
    hypothesis = " ".join(jieba.cut(prediction.lower()))
    reference = " ".join(jieba.cut(gold.lower()))
    if not hypothesis.split() or not reference.split():
        return {key: 0.0 for key in ROUGE_KEYS}
    scores = Rouge().get_scores(hypothesis, reference)[0]
    return {"rouge1": scores["rouge-1"]["f"], "rouge2": scores["rouge-2"]["f"], "rougeL": scores["rouge-l"]["f"]}


def lamp_mean(values: Sequence[float], seed: int = 0, samples: int = LAMP_BOOTSTRAP_SAMPLES) -> float:
    """One metric's mean as LaMP's evaluator reports it (`lamp_aggregate` of one score per example)."""
    return lamp_aggregate({str(i): {"f": v} for i, v in enumerate(values)}, keys=("f",), samples=samples,
                          seed=seed)["f"]


def meteor_status() -> str | None:
    """None when METEOR can be computed, else why not (WordNet missing)."""
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except LookupError:
        return ("METEOR skipped: NLTK's WordNet corpus is not installed "
                "(python -m nltk.downloader wordnet where there is internet, then copy ~/nltk_data here)")
    except ImportError:
        return "METEOR skipped: nltk is not installed"
    return None


def meteor(prediction: str, gold: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([gold.split()], prediction.split()))


def score_predictions(
    predictions: Mapping[str, str], golds: Mapping[str, str], with_meteor: bool = True, how: str = "rouge-score",
    seed: int = 0,
) -> tuple[dict[str, dict], dict]:
    """Per-example metrics and their means; the id sets must be equal, as in LaMP. `how`: one of
    `ROUGE_CHOICES` ('lamp' reports the ROUGE means as LaMP does, `lamp_mean` with `seed`)."""
    if set(predictions) != set(golds):
        missing = sorted(set(golds) - set(predictions))
        extra = sorted(set(predictions) - set(golds))
        raise PrlmError(
            f"prediction ids differ from gold ids: {len(missing)} gold id(s) without prediction"
            + (f" (e.g. '{missing[0]}')" if missing else "")
            + f", {len(extra)} prediction id(s) without gold" + (f" (e.g. '{extra[0]}')" if extra else "")
        )
    do_meteor = with_meteor and meteor_status() is None
    per_example = {}
    for qid, gold in golds.items():
        metrics = rouge(predictions[qid], gold, how)
        if do_meteor:
            metrics["meteor"] = meteor(predictions[qid], gold)
        per_example[qid] = metrics
    keys = list(next(iter(per_example.values()), {}))
    means = {k: float(np.mean([m[k] for m in per_example.values()])) for k in keys}
    if how == "lamp":
        means.update({k: lamp_mean([m[k] for m in per_example.values()], seed) for k in ROUGE_KEYS if k in means})
    return per_example, means




def lamp_aggregate(per_example: Mapping[str, dict], keys: Sequence[str] = ("rouge1", "rougeL"),
                   samples: int = LAMP_BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, float]:
    """LaMP's number for each metric: its evaluator scores with `evaluate`'s ROUGE, whose aggregator (rouge_score's
    BootstrapAggregator, used here) reports the median of `samples` bootstrap means of the per-question scores,
    drawn for each metric in turn. LaMP draws them unseeded; here `seed` fixes them, so a run has one number.
    prlm's own metrics are the plain means, which this approaches (about 1e-4 apart at LaMP's size)."""
    from rouge_score.scoring import BootstrapAggregator, Score

    if not per_example:
        raise PrlmError("LaMP's aggregation needs at least one scored question")
    aggregator = BootstrapAggregator(n_samples=samples)
    for metrics in per_example.values():
        aggregator.add_scores({k: Score(precision=0.0, recall=0.0, fmeasure=metrics[k]) for k in keys})
    state = np.random.get_state()  # the aggregator draws from numpy's global generator
    np.random.seed(seed)
    try:
        result = aggregator.aggregate()
    finally:
        np.random.set_state(state)
    return {k: float(result[k].mid.fmeasure) for k in keys}


def lamp_aggregation_note(lamp: dict, samples: int = LAMP_BOOTSTRAP_SAMPLES, seed: int = 0) -> str:
    values = ", ".join(f"{k} {v:.4f}" for k, v in lamp.items())
    return (f"LaMP's aggregation (median of {samples} bootstrap means, seed {seed}): {values}; the table above "
            "holds the plain means")


@dataclass
class BootstrapResult:
    metric: str
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    p_value: float
    """Share of resamples where B - A <= 0 (one-sided, for B better than A)."""
    n: int
    samples: int

    def line(self) -> str:
        return (f"{self.metric}: {self.mean_b:.4f} - {self.mean_a:.4f} = {self.diff:+.4f} "
                f"[95% CI {self.low:+.4f}, {self.high:+.4f}] (n={self.n})")


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], metric: str = "", samples: int = 1000, seed: int = 0
) -> BootstrapResult:
    """Difference of means B - A with a percentile 95% interval, resampling examples."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise PrlmError(f"paired bootstrap needs two equal, non-empty lists of scores (got {a.size} and {b.size})")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(samples, a.size))
    diffs = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return BootstrapResult(metric, float(a.mean()), float(b.mean()), float(b.mean() - a.mean()),
                           float(low), float(high), float((diffs <= 0).mean()), int(a.size), samples)


# --- run folders -------------------------------------------------------------

def environment() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("prlm", "torch", "transformers", "trl", "sentence-transformers", "rouge-score"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    import torch

    # Wall times on a shared 2-core machine depend on the thread count: record it beside them.
    return {"python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
            "torch_threads": torch.get_num_threads()}


def write_run(out: str | Path, rows: list[dict], summary: dict, task_name: str) -> None:
    """predictions.jsonl (per example), lamp_predictions.json (LaMP's format, with LaMP's
    task name `LaMP_4`, which its `evaluate_task` asserts), summary.json, summary.md."""
    from prlm.data.tasks import LAMP_NAMES, known_task_name

    out = Path(out)
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    name = known_task_name(task_name) or task_name
    atomic_write_json(out / "lamp_predictions.json",
                      {"task": LAMP_NAMES.get(name, name),
                       "golds": [{"id": r["id"], "output": r["answer"]} for r in rows]})
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown([summary]))


def load_run(path: str | Path) -> tuple[dict, list[dict]]:
    path = Path(path)
    if not (path / "summary.json").is_file() or not (path / "predictions.jsonl").is_file():
        raise PrlmError(f"'{path}' is not a run folder (needs summary.json and predictions.jsonl); make one with "
                        f"`prlm eval --out {path}`")
    return json.loads((path / "summary.json").read_text(encoding="utf-8")), read_jsonl(path / "predictions.jsonl")


def summary_markdown(summaries: Sequence[dict]) -> str:
    keys = [k for k in ("rouge1", "rougeL", "rouge2", "meteor") if any(k in s["metrics"] for s in summaries)]
    head = "| run | method | retriever | k | n | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (5 + len(keys))]
    for s in summaries:
        c = s["config"]
        vals = " | ".join(f"{s['metrics'][k]:.4f}" if k in s["metrics"] else "-" for k in keys)
        lines.append(f"| {s.get('name', '')} | {c['method']} | {c['retriever']} | {c['k']} | {s['n']} | {vals} |")
    return "\n".join(lines) + "\n"


def compare_runs(path_a: str | Path, path_b: str | Path, samples: int = 1000, seed: int = 0) -> list[BootstrapResult]:
    """Paired bootstrap of B against A on every metric both runs have."""
    (sum_a, rows_a), (sum_b, rows_b) = load_run(path_a), load_run(path_b)
    by_id_a, by_id_b = {r["id"]: r for r in rows_a}, {r["id"]: r for r in rows_b}
    if set(by_id_a) != set(by_id_b):
        raise PrlmError(f"runs '{path_a}' and '{path_b}' cover different question ids; evaluate both on the same "
                        "split and limit")
    ids = sorted(by_id_a)
    metrics = [k for k in sum_a["metrics"] if k in sum_b["metrics"]]
    return [paired_bootstrap([by_id_a[i]["metrics"][m] for i in ids], [by_id_b[i]["metrics"][m] for i in ids],
                             metric=m, samples=samples, seed=seed) for m in metrics]


def is_record(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "summary.json").is_file() and (folder / "predictions.jsonl.gz").is_file()


def read_record(folder: str | Path) -> tuple[dict, list[dict]]:
    """(summary, per-question rows) of one record folder `results/DATA/SPLIT/METHOD/`: the compact copy of a
    run folder that `prlm results add` keeps (beside `load_run`, which reads the run folder itself)."""
    folder = Path(folder)
    if not is_record(folder):
        raise PrlmError(f"'{folder}' is not a result record (needs summary.json and predictions.jsonl.gz); "
                        "keep one with `prlm results add`")
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    with gzip.open(folder / "predictions.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return summary, rows
