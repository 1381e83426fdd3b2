"""Committed records (results/) and the docs made from them alone."""

import gzip
import json
from pathlib import Path

import pytest

from prlm import PrlmError
from prlm.cli import main
from prlm.evaluation import write_run
from prlm.results import (
    SECTION_BEGIN,
    SECTION_END,
    add_record,
    comparisons,
    load_records,
    render_report,
    replace_section,
    results_json,
)

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, split: str, scores: list[float], method: str = "rag") -> Path:
    rows = [{"id": f"q{i}", "user_id": f"u{i % 2}", "answer": f"a{i}", "gold": f"g{i}", "prompt": "long prompt",
             "completion": f"<think>r</think><answer>a{i}</answer>", "format_ok": method == "prlm",
             "metrics": {"rouge1": s, "rouge2": s / 2, "rougeL": s}} for i, s in enumerate(scores)]
    if method != "prlm":
        for row in rows:
            del row["format_ok"]
    summary = {"name": folder.name, "task": "commit-subject", "data": "d", "split": split, "n": len(rows),
               "metrics": {k: sum(r["metrics"][k] for r in rows) / len(rows) for k in ("rouge1", "rouge2", "rougeL")},
               "config": {"method": method, "retriever": "bm25", "k": 4}, "environment": {"torch_threads": 2},
               "wall_time_s": 12.0,
               **({"format_rate": 1.0} if method == "prlm" else {})}
    write_run(folder, rows, summary, "commit-subject")
    return folder


def _records(tmp_path) -> Path:
    root = tmp_path / "results"
    add_record(_run(tmp_path / "rag", "test", [0.1, 0.2, 0.1, 0.0]), root, "ds", "rag", "fixed in advance",
               "prlm eval x")
    add_record(_run(tmp_path / "prlm", "test", [0.5, 0.4, 0.6, 0.3], "prlm"), root, "ds", "prlm", "dev", "prlm run y",
               selection="the step count, on the dev curve")
    return root


def test_a_record_chosen_on_dev_says_what_was_chosen(tmp_path):
    run = _run(tmp_path / "prlm", "test", [0.5, 0.4], "prlm")
    with pytest.raises(PrlmError, match="--selection"):
        add_record(run, tmp_path / "results", "ds", "prlm", "dev", "prlm run y")
    add_record(run, tmp_path / "results", "ds", "prlm", "fixed in advance", "prlm run y")  # nothing chosen: none
    summary = json.loads((tmp_path / "results" / "ds" / "test" / "prlm" / "summary.json").read_text())
    assert "selection" not in summary


def test_the_report_says_what_dev_chose(tmp_path):
    root = _records(tmp_path)
    markdown = render_report(root, f"{SECTION_BEGIN}\n{SECTION_END}\n", samples=50)[1]
    assert "- prlm: `prlm run y` (chosen on dev: the step count, on the dev curve)" in markdown


def test_a_record_keeps_what_a_reader_needs_and_no_prompt(tmp_path):
    root = _records(tmp_path)
    with gzip.open(root / "ds" / "test" / "prlm" / "predictions.jsonl.gz", "rt") as handle:
        row = json.loads(handle.readline())
    assert row["id"] == "q0" and row["rougeL"] == 0.5 and row["format_ok"] is True and "prompt" not in row
    assert row["completion"].startswith("<think>")
    summary = json.loads((root / "ds" / "test" / "prlm" / "summary.json").read_text())
    assert summary["selected_on"] == "dev" and summary["command"] == "prlm run y" and summary["n"] == 4
    rag_row = load_records(root)[("ds", "test", "rag")][1][0]
    assert "completion" not in rag_row  # only the reasoning prompt's completions are kept


def test_records_are_byte_stable(tmp_path):
    root = _records(tmp_path)
    first = (root / "ds" / "test" / "rag" / "predictions.jsonl.gz").read_bytes()
    add_record(tmp_path / "rag", root, "ds", "rag", "fixed in advance", "prlm eval x")
    assert (root / "ds" / "test" / "rag" / "predictions.jsonl.gz").read_bytes() == first


def test_comparisons_in_the_protocol_schema(tmp_path):
    rows = comparisons(load_records(_records(tmp_path)), samples=500)
    rouge_l = next(r for r in rows if r["metric"] == "rougeL")
    assert (rouge_l["a"], rouge_l["b"], rouge_l["n"], rouge_l["split"]) == ("rag", "prlm", 4, "test")
    assert rouge_l["diff"] == pytest.approx(0.35) and rouge_l["lo"] > 0 and rouge_l["hi"] >= rouge_l["diff"]
    assert rouge_l["selected_on"] == "dev" and rouge_l["command"] == "prlm run y"
    schema = {"data", "split", "n", "metric", "a", "b", "a_score", "b_score", "diff", "lo", "hi", "selected_on",
              "command", "commit"}
    assert schema <= set(rouge_l)


def test_a_record_asks_for_its_own_comparison(tmp_path):
    """An experiment's record names its baseline (compare_to): the report compares exactly that pair, B = it."""
    root = _records(tmp_path)
    add_record(_run(tmp_path / "w0", "test", [0.2, 0.2, 0.2, 0.2], "prlm"), root, "ds", "prlm-40steps",
               "fixed in advance", "c0")
    add_record(_run(tmp_path / "w05", "test", [0.3, 0.1, 0.4, 0.2], "prlm"), root, "ds", "prlm-40steps-pers",
               "fixed in advance", "c1", compare_to=["prlm-40steps", "not-there"])
    pairs = {(r["a"], r["b"]): r for r in comparisons(load_records(root), samples=200) if r["metric"] == "rougeL"}
    asked = pairs[("prlm-40steps", "prlm-40steps-pers")]
    assert asked["diff"] == pytest.approx(0.05) and asked["command"] == "c1"
    assert ("prlm-40steps-pers", "prlm-40steps") not in pairs
    assert not any("not-there" in pair for pair in pairs)  # a baseline without a record is skipped
    plain = json.loads((root / "ds" / "test" / "prlm-40steps" / "summary.json").read_text())
    assert "compare_to" not in plain  # records that ask for nothing keep their old shape


def test_different_questions_are_refused(tmp_path):
    root = _records(tmp_path)
    add_record(_run(tmp_path / "short", "test", [0.1, 0.2]), root, "ds", "no-profile", "fixed in advance", "c")
    with pytest.raises(PrlmError, match="different questions"):
        comparisons(load_records(root), samples=10)


def test_reward_model_rows_are_collected(tmp_path):
    root = _records(tmp_path)
    (root / "reward-model").mkdir()
    row = {"data": "ds", "split": "dev", "pairs": "own-vs-other-user", "n": 3, "accuracy": 0.7, "lo": 0.5,
           "hi": 0.9, "command": "prlm rm eval"}
    (root / "reward-model" / "a.json").write_text(json.dumps([row]))
    (root / "reward-model" / "a.train.json").write_text(json.dumps({"format": "prlm-reward-model"}))
    (root / "reward-model" / "a.scores.json").write_text(json.dumps([{"kind": "preamble", "margin": 0.1}]))
    assert results_json(root, samples=10)["reward_model"] == [row]


def test_the_report_rewrites_only_its_section(tmp_path):
    root = _records(tmp_path)
    markdown = f"# Results\n\nhand-written\n\n{SECTION_BEGIN}\nold table\n{SECTION_END}\n\nafter\n"
    json_text, new = render_report(root, markdown, samples=200)
    assert new.startswith("# Results\n\nhand-written") and new.endswith("after\n") and "old table" not in new
    assert "| prlm - rag | rougeL |" in new and "`prlm run y`" in new
    assert json.loads(json_text)["comparisons"][0]["b"] == "prlm"
    assert replace_section(new, "x") == replace_section(markdown, "x")
    with pytest.raises(PrlmError, match="generated section"):
        replace_section("no markers", "x")


def test_cli_writes_then_checks(tmp_path, capsys):
    root = _records(tmp_path)
    md, js = tmp_path / "results.md", tmp_path / "results.json"
    md.write_text(f"{SECTION_BEGIN}\n{SECTION_END}\n")
    args = ["--results", str(root), "--json", str(js), "--markdown", str(md)]
    assert main(["report", *args]) == 0
    assert main(["report", *args, "--check"]) == 0
    js.write_text(js.read_text().replace("prlm run y", "edited"))
    assert main(["report", *args, "--check"]) == 2
    assert "differ" in capsys.readouterr().err


def test_the_committed_docs_match_the_committed_records():
    """docs/results.json and the tables of docs/results.md are what `prlm report` makes of results/."""
    json_text, markdown = render_report(REPO / "results", (REPO / "docs" / "results.md").read_text(encoding="utf-8"))
    assert (REPO / "docs" / "results.json").read_text(encoding="utf-8") == json_text
    assert (REPO / "docs" / "results.md").read_text(encoding="utf-8") == markdown


def test_learning_curves_are_kept_tabled_and_plotted(tmp_path):
    from prlm.results import add_curve, curve_png, write_report

    train = tmp_path / "train"
    (train / "dev_evals").mkdir(parents=True)
    rows = [{"step": 0, "dev/rougeL": 0.2, "dev/format_rate": 0.9, "dev/answer_words": 6.0}]
    rows += [{"step": s, "reward": 1.0 + s / 10} for s in range(1, 21)]
    rows += [{"step": 20, "dev/rougeL": 0.3, "dev/format_rate": 1.0, "dev/answer_words": 7.0}]
    (train / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for step, scores in ((0, (0.1, 0.3)), (20, (0.3, 0.5))):
        (train / "dev_evals" / f"step-{step}.jsonl").write_text(
            "".join(json.dumps({"id": f"q{i}", "rougeL": s}) + "\n" for i, s in enumerate(scores)))
    with pytest.raises(PrlmError, match="train_log"):
        add_curve(tmp_path, tmp_path / "results", "ds", "prlm")
    root = tmp_path / "results"
    folder = add_curve(train, root, "ds", "prlm")
    assert (folder / "dev_evals" / "step-0.jsonl").is_file()
    md, js = tmp_path / "docs" / "results.md", tmp_path / "docs" / "results.json"
    md.parent.mkdir()
    md.write_text(f"{SECTION_BEGIN}\n{SECTION_END}\n")
    write_report(root, js, md, samples=10)
    text = md.read_text()
    assert "| 20 (best) | 0.3000 | +0.2000 [+0.2000, +0.2000] | 1.000 | 7.0 | 2.550 |" in text
    assert "| 0 | 0.2000 | - |" in text
    assert (md.parent / curve_png("ds", "prlm")).is_file() and curve_png("ds", "prlm") in text
    assert load_records(root) == {}  # a curve is not an evaluation record


def test_an_sft_runs_curve_is_kept_too(tmp_path):
    from prlm.results import add_curve

    sft = tmp_path / "sft"
    (sft / "dev_evals").mkdir(parents=True)
    (sft / "dev_curve.jsonl").write_text(json.dumps({"step": 32, "dev/rougeL": 0.2}) + "\n")
    (sft / "sft_summary.json").write_text("{}")
    (sft / "dev_evals" / "step-32.jsonl").write_text(json.dumps({"id": "q0", "rougeL": 0.2}) + "\n")
    folder = add_curve(sft, tmp_path / "results", "ds", "sft-s0")
    assert sorted(p.name for p in folder.iterdir()) == ["dev_curve.jsonl", "dev_evals", "sft_summary.json"]
    assert (folder / "dev_evals" / "step-32.jsonl").is_file()
    # trained without a dev curve (a later seed of a recipe whose step count is chosen): its summary holds the log
    (sft / "dev_curve.jsonl").unlink()
    (sft / "dev_evals" / "step-32.jsonl").unlink()
    folder = add_curve(sft, tmp_path / "results", "ds", "sft-s1")
    assert sorted(p.name for p in folder.iterdir()) == ["sft_summary.json"]  # no empty folder git would drop


def test_training_statistics_show_what_grpo_saw_and_the_reward_trend():
    from prlm.results import reward_trend, training_statistics_markdown

    rising = [{"step": s, "rewards/accuracy/mean": 0.5 + 0.01 * s, "reward_std": 0.2, "entropy": 0.4}
              for s in range(1, 11)]
    slope, low, high = reward_trend(rising)
    assert slope == pytest.approx(1.0) and low == pytest.approx(1.0) and high == pytest.approx(1.0)
    noisy = [{"step": s, "rewards/accuracy/mean": (0.9 if s % 2 else 0.1)} for s in range(1, 21)]
    slope, low, high = reward_trend(noisy)
    assert low < 0 < high  # alternating noise has no trend: the interval straddles zero
    lines = training_statistics_markdown(rising)
    assert "| steps | accuracy reward | within-group spread | entropy |" in lines
    assert "| 1-2 | 0.515 | 0.200 | 0.400 |" in lines and "| 9-10 | 0.595 | 0.200 | 0.400 |" in lines
    assert any("+1.000 per 100 steps" in line for line in lines)
    assert training_statistics_markdown(rising[:4]) == [] and reward_trend(rising[:2]) is None


def test_the_quote_of_the_warmup_reasoning_is_read_back():
    from prlm.data import get_task
    from prlm.training.grpo import quoted_past_output, warmup_completion

    task = get_task("commit-subject")
    past = 'doc: say "no" to the parser. Twice'  # quotes and a full stop inside the quoted subject
    completion = warmup_completion(task, [{task.output_field: past}], "the new text", "fix it")
    assert quoted_past_output(completion, task) == past
    assert quoted_past_output(" The user writes short subjects</think><answer>x</answer>", task) is None


def test_reasoning_use_measures_how_far_answers_follow_the_quote():
    from prlm.results import reasoning_use_markdown, reasoning_use_rows

    quote = "parser: fix the crash on empty input"
    reasoning = f' The user\'s closest past subject line: "{quote}". The new text is about: x</think>'
    copying = [{"answer": quote, "gold": "docs: mention windows",
                "completion": reasoning + f"<answer>{quote}</answer>"},
               {"answer": "", "gold": "docs: more", "completion": reasoning + "<answer></answer>"}]
    unquoted = [{"answer": "a", "gold": "b", "completion": " plain</think><answer>a</answer>"}]
    summary = {"eval_config": {"task": "commit-subject"}}
    records = {("d", "dev", "prlm"): (summary, copying), ("d", "dev", "prlm-rl-only"): (summary, unquoted)}
    rows = reasoning_use_rows(records)
    assert [(r["method"], r["n"], r["quoting"]) for r in rows] == [("prlm", 2, 1.0)]  # no quote: no row
    assert rows[0]["answer_to_quote"] == pytest.approx(1.0)  # the empty answer is left out of the means
    assert rows[0]["gold_to_quote"] == pytest.approx(0.0) and rows[0]["answer_to_gold"] == pytest.approx(0.0)
    assert "| d | dev | prlm | 2 | 1.00 | 1.000 | 0.000 | 0.000 |" in reasoning_use_markdown(rows)


def test_the_tables_show_each_records_share_of_degenerate_answers(tmp_path):
    root = tmp_path / "results"
    add_record(_run(tmp_path / "prlm", "test", [0.5, 0.4, 0.6, 0.3], "prlm"), root, "ds", "prlm",
               "fixed in advance", "prlm run y")
    records = load_records(root)
    summary, predictions = records[("ds", "test", "prlm")]
    predictions[0]["answer"], predictions[1]["answer"] = "The user would write: a0", ""
    _, markdown = render_report(root, f"{SECTION_BEGIN}\n{SECTION_END}\n")
    assert "| degenerate answers |" in markdown
    from prlm.results import degenerate_share

    assert degenerate_share(predictions) == 0.5  # one talks about the task, one is empty


def test_seeds_make_one_record_compared_question_by_question(tmp_path):
    """Two seeds of a trained method: one record, each question scored by its mean over seeds, the table giving
    each seed's own figure and the comparison its number of seeds."""
    root = _records(tmp_path)
    train = tmp_path / "train_summary.json"
    train.write_text(json.dumps({"steps": 4, "wall_time_s": 9.0, "config": {"model": "m"}}))
    s0 = _run(tmp_path / "s0", "test", [0.9, 0.0, 0.6, 0.3], "prlm")
    s1 = _run(tmp_path / "s1", "test", [0.1, 0.8, 0.6, 0.3], "prlm")
    add_record([s0, s1], root, "ds", "prlm", "fixed in advance", "prlm run --set seed=N", seeds=[0, 1],
               train_summary=[train, train])
    summary, rows = load_records(root)[("ds", "test", "prlm")]
    assert summary["n"] == 4 and len(rows) == 8 and {r["seed"] for r in rows} == {0, 1}
    assert summary["metrics"]["rougeL"] == pytest.approx(0.45)
    assert [r["metrics"]["rougeL"] for r in summary["seed_runs"]] == pytest.approx([0.45, 0.45])
    pair = next(r for r in comparisons(load_records(root), samples=500) if r["metric"] == "rougeL")
    assert (pair["a"], pair["b"], pair["n"], pair["seeds"]) == ("rag", "prlm", 4, 2)
    assert pair["diff"] == pytest.approx(0.35)
    # each question's mean over seeds (0.5, 0.4, 0.6, 0.3) is ahead of rag's (0.1, 0.2, 0.1, 0.0) by 0.2-0.5; a
    # seed's own rows are not (seed 0's second question trails by 0.2, seed 1's first by 0.0)
    assert 0.2 <= pair["lo"] < pair["hi"] <= 0.5
    markdown = render_report(root, f"{SECTION_BEGIN}\n{SECTION_END}\n", samples=50)[1]
    assert "| 0.4500 (s0) / 0.4500 (s1) |" in markdown
    assert any(line.startswith("| prlm - rag | rougeL |") and line.endswith("| 2 |") for line in markdown.splitlines())


def test_each_seed_is_compared_with_the_same_seed_or_the_one_untrained_run(tmp_path):
    """Beside the mean over seeds, the comparison gives each seed's own difference: against the other side's
    same seed where it has seeds, against its one run where it has none."""
    root = _records(tmp_path)
    prlm = [_run(tmp_path / f"p{i}", "test", scores, "prlm") for i, scores in
            enumerate(([0.9, 0.0, 0.6, 0.3], [0.1, 0.8, 0.6, 0.3]))]
    sft = [_run(tmp_path / f"s{i}", "test", scores) for i, scores in
           enumerate(([0.9, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 0.0]))]
    add_record(prlm, root, "ds", "prlm", "fixed in advance", "c", seeds=[0, 1])
    add_record(sft, root, "ds", "sft", "fixed in advance", "c", seeds=[0, 1])
    rows = {(r["a"], r["b"]): r for r in comparisons(load_records(root), samples=200) if r["metric"] == "rougeL"}
    # against rag's one run (0.1, 0.2, 0.1, 0.0): seed 0 is ahead on three questions and behind on one, seed 1
    # ahead on three and level on the first
    assert [(d["seed"], d["diff"], d["better"], d["worse"]) for d in rows[("rag", "prlm")]["per_seed"]] == \
        [(0, 0.35, 3, 1), (1, 0.35, 3, 0)]
    # against sft, seed by seed: seed 0 answers exactly as sft's seed 0, seed 1 is ahead of sft's seed 1 on all four
    by_seed = rows[("sft", "prlm")]["per_seed"]
    assert [(d["seed"], d["diff"], d["better"], d["worse"], d["lo"], d["hi"]) for d in by_seed] == \
        [(0, 0.0, 0, 0, 0.0, 0.0), (1, 0.45, 4, 0, by_seed[1]["lo"], by_seed[1]["hi"])]
    assert "per_seed" not in next(r for r in comparisons(load_records(_records(tmp_path / "plain")), samples=50))
    markdown = render_report(root, f"{SECTION_BEGIN}\n{SECTION_END}\n", samples=50)[1]
    assert "| s0 +0.0000 [+0.0000, +0.0000] (0/0) / s1 +0.4500 [" in markdown


def test_a_record_of_seeds_names_each_runs_seed(tmp_path):
    runs = [_run(tmp_path / "s0", "test", [0.5, 0.4], "prlm"), _run(tmp_path / "s1", "test", [0.5, 0.4], "prlm")]
    with pytest.raises(PrlmError, match="--seeds 0,1"):
        add_record(runs, tmp_path / "results", "ds", "prlm", "fixed in advance", "c")
    with pytest.raises(PrlmError, match="--seeds 0,1"):
        add_record(runs, tmp_path / "results", "ds", "prlm", "fixed in advance", "c", seeds=[1, 1])
    with pytest.raises(PrlmError, match="one --train-summary per run"):
        add_record(runs, tmp_path / "results", "ds", "prlm", "fixed in advance", "c", seeds=[0, 1],
                   train_summary=[tmp_path / "t.json"])
    short = _run(tmp_path / "short", "test", [0.5], "prlm")
    with pytest.raises(PrlmError, match="same questions"):
        add_record([runs[0], short], tmp_path / "results", "ds", "prlm", "fixed in advance", "c", seeds=[0, 1])
