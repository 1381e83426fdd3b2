"""The benchmark suite's structure (never its timings: nothing here is timed)."""

import json

import pytest
from bench import generation, retrieval, reward_model, sft
from bench.common import BenchError, choose_sizes, comparison, load_examples, measurement
from bench.report import QUICK_BANNER, render_markdown
from bench.run import build_parser, main, present_sections

DATA = "../shared/data/git-commit-subject"


def _args(*argv):
    return build_parser(present_sections()).parse_args(["--quick", "--data", DATA, *argv])


def _assert_comparison(c):
    assert {"name", "baseline", "candidate", "ratio", "target", "target_met"} <= set(c)
    for side in (c["baseline"], c["candidate"]):
        assert {"label", "times_s", "median_s", "rate", "unit"} <= set(side)
        assert len(side["times_s"]) == 1  # --quick: one repetition


def test_measurement_and_comparison_arithmetic():
    base = measurement("slow", [4.0, 2.0, 3.0], 6, "items/s")
    fast = measurement("fast", [1.0], 6, "items/s")
    assert base["median_s"] == 3.0 and base["rate"] == 2.0
    c = comparison("x", base, fast, target=2.0)
    assert c["ratio"] == 3.0 and c["target_met"] is True


def test_sizes_come_from_the_command_line_else_the_mode_defaults():
    args = _args("--k", "7")
    assert choose_sizes(args, retrieval.FULL, retrieval.QUICK, True) == {**retrieval.QUICK, "k": 7}
    assert choose_sizes(None, retrieval.FULL, retrieval.QUICK, False) == retrieval.FULL


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="benchmark data not found"):
        load_examples(tmp_path / "nowhere")


def test_report_marks_quick_runs_and_absent_or_failed_sections():
    report = {"quick": True, "command": "python -m bench --quick",
              "machine": {"date": "d", "git_commit": "c", "cpu": "cpu", "cores": 2, "usable_cores": 2,
                          "torch_threads": 1, "omp_num_threads": "1", "cuda": None, "python": "3",
                          "versions": {"torch": "2"}},
              "sections": {"grpo": {"title": "grpo", "absent": True}, "x": {"title": "X", "error": "Boom: no"}}}
    text = render_markdown(report)
    assert text.startswith("# Benchmarks\n\n" + QUICK_BANNER)
    assert "`bench/grpo.py` does not exist yet" in text and "**Failed:** `Boom: no`" in text


def test_sft_quick_run_times_both_sides_with_a_tiny_model(tiny_llama_dir):
    result = sft.run(True, _args("--sft-policy", tiny_llama_dir, "--repeats", "1"))
    (step,) = result["comparisons"]
    _assert_comparison(step)
    assert "micro_batch 0" in step["baseline"]["label"] and "micro-batches of 1" in step["candidate"]["label"]
    assert result["sizes"]["steps_timed"] == 1


@pytest.mark.slow
def test_retrieval_quick_run_checks_top_k_against_rank_bm25():
    result = retrieval.run(True, _args("--bm25-users", "2", "--dense-users", "0"))
    assert result["sizes"]["bm25_questions"] > 0 and result["sizes"]["repeats"] == 1
    assert len(result["comparisons"]) == 2
    for c in result["comparisons"]:
        _assert_comparison(c)
        assert c["checks"]["identical_top_k"] == c["checks"]["questions"]
    assert result["profile"]["bm25, one cold pass"]


@pytest.mark.slow
def test_generation_quick_run_with_a_tiny_model(tiny_llama_dir):
    result = generation.run(True, _args("--policy", tiny_llama_dir, "--eval-examples", "2",
                                        "--max-new-tokens", "3", "--rollout-max-new-tokens", "3",
                                        "--reasoning-max-new-tokens", "4"))
    evaluation, reasoning, rollouts = result["comparisons"]
    assert "reasoning prompt (4 new tokens)" in reasoning["name"]
    for c in (evaluation, reasoning, rollouts):
        _assert_comparison(c)
        assert c["candidate"]["tokens_per_s"] is not None
    assert evaluation["checks"]["examples"] == 2 and 0 <= evaluation["checks"]["identical_outputs"] <= 2
    assert rollouts["candidate"]["tokens"] >= 1
    assert set(result["profile"]["evaluation, the prompts' forward passes alone (prefill)"]) == {
        "one_at_a_time_s", "batched_s", "batch_size"}


@pytest.mark.slow
def test_runner_writes_markdown_and_json(tmp_path):
    code = main(["--quick", "--data", DATA, "--only", "reward_model", "--pairs", "4", "--out-dir", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    assert report["quick"] is True and set(report["sections"]) == {"reward_model"}
    assert {"cpu", "cores", "torch_threads", "versions", "date", "git_commit"} <= set(report["machine"])
    rm = report["sections"]["reward_model"]
    _assert_comparison(rm["comparisons"][0])
    assert rm["comparisons"][0]["checks"]["pairs"] == 4
    assert (tmp_path / "benchmarks.md").read_text().startswith("# Benchmarks\n\n" + QUICK_BANNER)


def test_every_size_has_a_quick_default_and_a_help_text():
    for section in (retrieval, generation, reward_model, sft):
        assert section.FULL.keys() == section.QUICK.keys() == section.HELP.keys()
