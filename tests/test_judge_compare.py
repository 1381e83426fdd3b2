"""`prlm rm judge-compare` (two evaluations judged on users the judge never saw) and its rows in `prlm report`."""

from __future__ import annotations

import json

import pytest

from helpers import write_lamp
from prlm import PrlmError
from prlm.cli import main
from prlm.evaluation import paired_bootstrap, write_run
from prlm.results import BOOTSTRAP_SAMPLES, SECTION_BEGIN, SECTION_END, add_record, render_report
from prlm.reward.judge import COMPARE_MEASURES, JudgeCompareConfig, judge_compare, judge_rows
from test_reward_model import make_tiny_rm
from test_reward_style import commit_questions

JUDGE_USERS = {"train": ["u0"], "validation": ["u1"], "report": ["u2", "u3", "u4", "u5"]}


@pytest.fixture()
def setup(tmp_path):
    """(data folder, gold per question id, judge checkpoint): 12 questions of 6 users on split 'train'; the judge
    trained on u0 and chose its epoch on u1."""
    questions, outputs = commit_questions()
    data = write_lamp(tmp_path / "data", split="train", questions=questions, outputs=outputs)
    golds = {g["id"]: g["output"] for g in outputs["golds"]}
    judge = make_tiny_rm(tmp_path / "judge", context_entries=2)
    cfg_file = tmp_path / "judge" / "prlm_rm_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "role": "judge", "task": "commit-subject",
                                    "users": JUDGE_USERS}))
    return data, golds, judge


def run_folder(folder, golds: dict, answers: dict, rouge: dict):
    rows = [{"id": qid, "user_id": "u" + qid[1:].split("-")[0], "answer": answers[qid], "gold": gold,
             "metrics": {"rouge1": rouge[qid], "rougeL": rouge[qid]}} for qid, gold in sorted(golds.items())]
    summary = {"name": folder.name, "split": "train", "n": len(rows),
               "config": {"method": "prlm", "retriever": "bm25", "k": 4},
               "metrics": {k: sum(r["metrics"][k] for r in rows) / len(rows) for k in ("rouge1", "rougeL")}}
    write_run(folder, rows, summary, "commit-subject")
    return folder


def measures(result: dict) -> dict:
    return {m["measure"]: m for m in result["measures"]}


def test_gold_answers_against_empty_ones_on_unseen_users(setup, tmp_path, capsys):
    data, golds, judge = setup
    a = run_folder(tmp_path / "w0", golds, {q: "" for q in golds}, {q: 0.0 for q in golds})
    b = run_folder(tmp_path / "w05", golds, golds, {q: 1.0 for q in golds})
    # B as the committed record (with its training recipe's w_pers), A as a run folder: both are accepted
    train = tmp_path / "train_summary.json"
    train.write_text(json.dumps({"steps": 40, "config": {"w_pers": 0.5}}))
    record = add_record(b, tmp_path / "results", "toy", "pers-w05", "fixed in advance", "prlm run x",
                        train_summary=train)
    out = tmp_path / "results" / "reward-model" / "judge-compare.toy.train.json"
    assert main(["rm", "judge-compare", "--a", str(a), "--b", str(record), "--model", judge, "--data", str(data),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 question(s) of 4 user(s) the judge never saw (4 of 2 user(s)" in printed and str(out) in printed
    result = json.loads(out.read_text())
    assert (result["data"], result["split"], result["a"], result["b"]) == ("toy", "train", "w0", "pers-w05")
    assert result["a_w_pers"] is None and result["b_w_pers"] == 0.5 and result["judge"] == "judge"
    assert result["command"].startswith("prlm rm judge-compare --a ") and f"--out {out}" in result["command"]
    assert result["samples"] == BOOTSTRAP_SAMPLES == JudgeCompareConfig.samples and result["seed"] == 0
    # the judge's own users (u0 trained it, u1 chose its epoch) are dropped
    assert result["n"] == 8 and result["dropped"] == {**result["dropped"], "questions": 4, "users": 2}
    assert {q["user_id"] for q in result["per_question"]} == {"u2", "u3", "u4", "u5"}
    assert [m["measure"] for m in result["measures"]] == [k for k, _ in COMPARE_MEASURES]

    by = measures(result)
    # B's answers are the golds: the judge scores them (its reward equals judge_rows' on B's answers); A's are
    # empty, degenerate: reward 0 and no raw score
    from prlm.data import load_split
    from prlm.reward.model import load_reward_model

    questions = {ex.id: ex for ex in load_split(data, "train", "commit-subject").examples}
    kept = [q["id"] for q in result["per_question"]]
    expected = judge_rows(load_reward_model(judge), [{"id": i, "answer": golds[i]} for i in kept], questions)
    assert [q["b"]["judge_reward"] for q in result["per_question"]] == pytest.approx(
        [r["judge_reward"] for r in expected], abs=1e-6)
    assert all(q["a"]["judge_reward"] == 0.0 and q["a"]["judge_score"] is None for q in result["per_question"])
    assert by["judge_reward"]["a_mean"] == 0 and by["judge_reward"]["diff"] > 0 and by["judge_reward"]["lo"] > 0
    assert by["judge_score"]["n"] == 0 and by["judge_score"]["diff"] is None
    assert (by["rougeL"]["a_mean"], by["rougeL"]["b_mean"], by["rougeL"]["lo"], by["rougeL"]["hi"]) == (0, 1, 1, 1)
    # the gold has an area prefix and lower-case first letter (as the profiles); it is 7 words where the profile
    # titles are 4 (another length bucket), and the empty answer's bucket is the profiles'
    for measure, diff in (("prefix_match", 1.0), ("prefix_match_gold_has_prefix", 1.0), ("case_match", 1.0),
                          ("length_match", -1.0)):
        assert by[measure]["diff"] == diff and by[measure]["lo"] == by[measure]["hi"] == diff and by[measure]["n"] == 8
    # every figure re-derives from the per-question values
    for measure, _ in COMPARE_MEASURES:
        pairs = [(q["a"][measure], q["b"][measure]) for q in result["per_question"]
                 if q["a"][measure] is not None and q["b"][measure] is not None]
        if pairs:
            assert by[measure]["b_mean"] == pytest.approx(sum(b for _, b in pairs) / len(pairs), abs=1e-4)


def test_the_interval_is_paired_and_b_minus_a(setup, tmp_path):
    """ROUGE-L that varies a lot between questions, with B 0.05 above A on every one: paired, the interval is
    the single point +0.05 (unpaired it would be wide; swapped it would be -0.05)."""
    data, golds, judge = setup
    ids = sorted(golds)
    base = {q: (i % 4) / 4 for i, q in enumerate(ids)}
    a = run_folder(tmp_path / "a", golds, {q: "fix it" for q in golds}, base)
    b = run_folder(tmp_path / "b", golds, {q: golds[q] for q in golds}, {q: v + 0.05 for q, v in base.items()})
    result = judge_compare(JudgeCompareConfig(a=str(a), b=str(b), model=judge, data=str(data),
                                              out=str(tmp_path / "c.json"), samples=2000))
    rouge = measures(result)["rougeL"]
    assert rouge["diff"] == pytest.approx(0.05) and rouge["lo"] == pytest.approx(0.05)
    assert rouge["hi"] == pytest.approx(0.05)
    # judge raw scores: both sides non-degenerate, the interval is the paired bootstrap of the per-question values
    score = measures(result)["judge_score"]
    side = [[q[s]["judge_score"] for q in result["per_question"]] for s in ("a", "b")]
    expected = paired_bootstrap(side[0], side[1], samples=2000, seed=0)
    assert score["n"] == 8 and score["diff"] == pytest.approx(expected.diff, abs=1e-4)
    assert (score["lo"], score["hi"]) == (round(expected.low, 4), round(expected.high, 4))


def test_refusals(setup, tmp_path):
    data, golds, judge = setup
    a = run_folder(tmp_path / "a", golds, golds, {q: 0.5 for q in golds})
    fewer = {q: g for q, g in golds.items() if q != "q5-1"}
    short = run_folder(tmp_path / "short", fewer, fewer, {q: 0.5 for q in fewer})
    with pytest.raises(PrlmError, match="different questions"):
        judge_compare(JudgeCompareConfig(a=str(a), b=str(short), model=judge, data=str(data), out="x.json"))
    with pytest.raises(PrlmError, match="out is required"):
        JudgeCompareConfig(a="a", b="b", model="m", data="d")
    cfg_file = tmp_path / "judge" / "prlm_rm_config.json"
    everyone = {"train": [f"u{u}" for u in range(6)], "validation": []}
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "users": everyone}))
    with pytest.raises(PrlmError, match="every question belongs to a user the judge"):
        judge_compare(JudgeCompareConfig(a=str(a), b=str(a), model=judge, data=str(data), out="x.json"))


def test_the_report_tables_judge_comparisons(tmp_path):
    root = tmp_path / "results"
    (root / "reward-model").mkdir(parents=True)
    measure = {"measure": "judge_reward", "n": 5, "a_mean": 0.4, "b_mean": 0.55, "diff": 0.15, "lo": 0.05,
               "hi": 0.25}
    content = {"format": "prlm-judge-compare", "command": "prlm rm judge-compare --a A --b B", "data": "ds",
               "split": "dev", "a": "pers-w0", "b": "pers-w05", "a_w_pers": 0.0, "b_w_pers": 0.5, "judge": "jdg",
               "n": 5, "users": 3, "questions": 9, "dropped": {"questions": 4, "users": 2}, "samples": 10000,
               "seed": 0, "what": {"judge_reward": "judge reward"},
               "measures": [measure, {"measure": "judge_score", "n": 0, "a_mean": None, "b_mean": None,
                                      "diff": None, "lo": None, "hi": None}], "per_question": []}
    (root / "reward-model" / "judge-compare.ds.dev.json").write_text(json.dumps(content))
    markdown = f"# R\n\n{SECTION_BEGIN}\n{SECTION_END}\n"
    json_text, new = render_report(root, markdown, samples=10)
    rows = json.loads(json_text)["personalization"]
    assert rows[0] == {"data": "ds", "split": "dev", "a": "pers-w0", "b": "pers-w05", "judge": "jdg",
                       "measure": "judge_reward", "a_mean": 0.4, "b_mean": 0.55, "diff": 0.15, "lo": 0.05,
                       "hi": 0.25, "n": 5, "command": "prlm rm judge-compare --a A --b B"}
    assert [r["measure"] for r in rows] == ["judge_reward", "judge_score"]
    assert json.loads(json_text)["reward_model"] == []  # a judge comparison is not a reward-model accuracy row
    assert "A is `pers-w0` (w_pers 0) and B is `pers-w05` (w_pers 0.5)" in new and "never saw these users" in new
    assert "(4 questions of 2 users dropped)" in new
    assert "| judge_reward | judge reward | 5 | 0.4000 | 0.5500 | +0.1500 | [+0.0500, +0.2500] |" in new
    assert "| judge_score |  | 0 | - | - | - | - |" in new and "`prlm rm judge-compare --a A --b B`" in new
    # without such a file there is no key at all (the docs stay as they were)
    (root / "reward-model" / "judge-compare.ds.dev.json").unlink()
    assert "personalization" not in json.loads(render_report(root, markdown, samples=10)[0])
