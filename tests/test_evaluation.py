import json

import numpy as np
import pytest
from rouge_score import rouge_scorer

from prlm import PrlmError
from prlm.evaluation import compare_runs, paired_bootstrap, rouge, score_predictions, write_run


def test_rouge_matches_rouge_score_defaults_and_strips():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    expected = scorer.score("the cats are running fast", "cats run fast")
    got = rouge("  cats run fast ", "the cats are running fast")
    assert got["rouge1"] == pytest.approx(expected["rouge1"].fmeasure)
    assert got["rougeL"] == pytest.approx(expected["rougeL"].fmeasure)
    assert got["rouge1"] < 1.0  # no stemming: run != running


def test_score_predictions_means_and_id_check():
    golds = {"a": "fix the bug", "b": "add a test"}
    per, means = score_predictions({"a": "fix the bug", "b": "nothing"}, golds, with_meteor=False)
    assert per["a"]["rouge1"] == 1.0 and per["b"]["rouge1"] == 0.0
    assert means["rougeL"] == pytest.approx(0.5)
    with pytest.raises(PrlmError, match="1 gold id\\(s\\) without prediction \\(e.g. 'b'\\)"):
        score_predictions({"a": "x"}, golds)


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 200)
    better = paired_bootstrap(a, a + 0.1, samples=500)
    assert better.diff == pytest.approx(0.1) and better.low == pytest.approx(0.1) and better.p_value == 0
    noisy = paired_bootstrap(a, rng.uniform(0, 1, 200), samples=500)
    assert noisy.low < noisy.diff < noisy.high
    assert paired_bootstrap(a, a + 0.1, samples=500, seed=3).low == better.low
    with pytest.raises(PrlmError):
        paired_bootstrap([1.0], [1.0, 2.0])


def _run(folder, answers, golds):
    per, means = score_predictions(answers, golds, with_meteor=False)
    rows = [{"id": i, "answer": answers[i], "gold": golds[i], "metrics": per[i]} for i in golds]
    summary = {"name": folder.name, "n": len(rows), "metrics": means,
               "config": {"method": "rag", "retriever": "bm25", "k": 4}}
    write_run(folder, rows, summary, "LaMP-4")


def test_run_folder_and_compare(tmp_path):
    golds = {f"q{i}": f"headline number {i}" for i in range(30)}
    _run(tmp_path / "a", {i: "nothing" for i in golds}, golds)
    _run(tmp_path / "b", dict(golds), golds)
    lamp = json.loads((tmp_path / "b" / "lamp_predictions.json").read_text())
    assert lamp["task"] == "LaMP_4" and len(lamp["golds"]) == 30  # LaMP's evaluator asserts this name
    results = {r.metric: r for r in compare_runs(tmp_path / "a", tmp_path / "b")}
    assert results["rouge1"].diff == pytest.approx(1.0) and results["rouge1"].low > 0.9
    _run(tmp_path / "c", {"q0": "x"}, {"q0": "y"})
    with pytest.raises(PrlmError, match="different question ids"):
        compare_runs(tmp_path / "a", tmp_path / "c")
    with pytest.raises(PrlmError, match="not a run folder"):
        compare_runs(tmp_path / "a", tmp_path / "missing")
