"""LaMP submissions (predict-only, LaMP's task names), the task check, and the
checks that run before any model loads (output folder, device, bootstrap samples)."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from helpers import lamp4_questions, write_lamp
from prlm import PrlmError
from prlm.cli import main
from prlm.data import load_split
from prlm.evaluation import write_run
from prlm.io import atomic_write_json, check_output_dir

# A model id that cannot load: a command that fails on it loaded the model before checking.
NO_MODEL = "prlm-test-nobody/never-loaded"


# --- LaMP's evaluator, re-implemented from its documented behaviour ------------
# LaMP's eval/evaluation.py (LaMPEvaluation with a single golds json): the golds
# file is {"task": "LaMP_4", "golds": [...]}; evaluate_task(preds_file, task_name)
# asserts preds["task"] == task_name and that the golds cover that task, then that
# the prediction ids equal the gold ids, and scores ROUGE-1 and ROUGE-L
# (rouge_score F1, no stemming, both sides stripped) averaged over questions.

def lamp_evaluate_task(golds_path, preds_path, task_name: str) -> dict:
    from rouge_score import rouge_scorer

    golds = json.loads(open(golds_path, encoding="utf-8").read())
    tasks_golds = {golds["task"]: golds["golds"]}
    preds = json.loads(open(preds_path, encoding="utf-8").read())
    assert preds["task"] == task_name, "The provided task_name and the results do not match."
    assert preds["task"] in tasks_golds, "The provided golds cannot be used to evaluate this task."
    golds_dict = {y["id"]: y["output"] for y in tasks_golds[task_name]}
    preds_dict = {x["id"]: x["output"] for x in preds["golds"]}
    assert set(golds_dict) == set(preds_dict), "Predictions ids and gold ids do not match."
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    scores = [scorer.score(golds_dict[i].strip(), preds_dict[i].strip()) for i in golds_dict]
    return {"rouge-1": sum(s["rouge1"].fmeasure for s in scores) / len(scores),
            "rouge-L": sum(s["rougeL"].fmeasure for s in scores) / len(scores)}


def test_predict_only_writes_a_lamp4_submission_lamps_evaluator_scores(tmp_path, tiny_llama_dir, capsys):
    full = write_lamp(tmp_path / "full")
    public = tmp_path / "public"  # LaMP's test set: the questions, golds withheld
    public.mkdir()
    shutil.copy(full / "dev_questions.json", public / "dev_questions.json")
    out = tmp_path / "submission"
    argv = ["eval", "--task", "LaMP-4", "--data", str(public), "--split", "dev", "--method", "rag", "--k", "2",
            "--model", tiny_llama_dir, "--max-new-tokens", "4", "--backend", "hf", "--device", "cpu",
            "--out", str(out)]
    assert main(argv) == 2  # without golds, evaluation says how to get a submission
    assert "--predict-only" in capsys.readouterr().err
    assert main(argv + ["--predict-only"]) == 0
    assert "lamp_predictions.json" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predict_only"] is True and summary["metrics"] == {} and summary["n"] == 4
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["gold"] is None and r["metrics"] == {} for r in rows)
    scores = lamp_evaluate_task(full / "dev_outputs.json", out / "lamp_predictions.json", "LaMP_4")
    assert set(scores) == {"rouge-1", "rouge-L"} and all(0.0 <= v <= 1.0 for v in scores.values())
    # A predict-only run cannot be compared (it has no metrics); the error says so.
    assert main(["compare", str(out), str(out)]) == 2
    assert "predict-only" in capsys.readouterr().err


@pytest.mark.parametrize("task, lamp_name", [("LaMP-4", "LaMP_4"), ("LaMP-5", "LaMP_5"), ("LaMP-7", "LaMP_7"),
                                             ("LaMP_7", "LaMP_7"), ("commit-subject", "commit-subject")])
def test_prediction_files_carry_lamps_task_names(tmp_path, task, lamp_name):
    rows = [{"id": "q1", "answer": "a headline"}, {"id": "q2", "answer": "another"}]
    write_run(tmp_path / "run", rows, {"metrics": {}, "config": {"method": "rag", "retriever": "bm25", "k": 1},
                                       "n": 2}, task)
    golds = tmp_path / "golds.json"
    golds.write_text(json.dumps({"task": lamp_name, "golds": [{"id": "q1", "output": "a headline"},
                                                             {"id": "q2", "output": "other"}]}))
    scores = lamp_evaluate_task(golds, tmp_path / "run" / "lamp_predictions.json", lamp_name)
    assert scores["rouge-1"] == pytest.approx(0.5)


# --- the data must belong to the task asked for ------------------------------

def _commit_data(folder, with_outputs=True):
    questions, outputs = lamp4_questions()
    for q in questions:
        q["input"] = q["input"].replace("Generate a headline for the following article: ",
                                        "Generate a subject line for the following commit message: ")
    outputs["task"] = "commit-subject"
    return write_lamp(folder, questions=questions, outputs=outputs if with_outputs else None)


def test_outputs_task_field_and_input_prefix_name_the_wrong_task(tmp_path):
    data = _commit_data(tmp_path / "commits")
    with pytest.raises(PrlmError, match=r'dev_outputs.json: the data belong to task commit-subject, not LaMP-7: '
                                        r'.*"task": "commit-subject".*--task commit-subject.*--allow-task-mismatch'):
        load_split(data, "dev", "LaMP-7")
    # Without an outputs file (a submission's test set), the inputs' instruction is the evidence.
    bare = _commit_data(tmp_path / "bare", with_outputs=False)
    with pytest.raises(PrlmError, match=r"dev_questions.json: the data belong to task commit-subject, not LaMP-4: "
                                        r"4 of 4 inputs start with 'Generate a subject line"):
        load_split(bare, "dev", "LaMP-4")
    assert len(load_split(data, "dev", "LaMP-7", allow_task_mismatch=True)) == 4
    assert len(load_split(data, "dev", "commit-subject")) == 4
    # LaMP's own name in the outputs file is the same task.
    assert len(load_split(write_lamp(tmp_path / "lamp4"), "dev", "LaMP-4")) == 4
    # Custom data with no known instruction is not refused.
    questions, outputs = lamp4_questions()
    for q in questions:
        q["input"] = q["input"].split(": ", 1)[1]
    outputs["task"] = "my-own-task"
    assert len(load_split(write_lamp(tmp_path / "own", questions=questions, outputs=outputs), "dev", "LaMP-4")) == 4


def test_cli_refuses_the_wrong_task_before_loading_a_model(tmp_path, capsys):
    data = _commit_data(tmp_path / "commits")
    assert main(["eval", "--task", "LaMP-7", "--data", str(data), "--split", "dev", "--model", NO_MODEL,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "belong to task commit-subject" in err and "cannot load model" not in err
    assert main(["data", "check", str(data), "--task", "LaMP-4"]) == 2
    assert main(["data", "check", str(data), "--task", "LaMP-4", "--allow-task-mismatch"]) == 0


# --- checks before any model loads --------------------------------------------

def test_out_that_is_a_file_or_under_a_file_fails_before_the_model_loads(tmp_path, capsys):
    data = write_lamp(tmp_path / "data")
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    base = ["eval", "--task", "LaMP-4", "--data", str(data), "--split", "dev", "--model", NO_MODEL]
    assert main(base + ["--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and "cannot load model" not in err
    assert main(base + ["--out", str(taken / "run")]) == 2
    assert "no folder can be made under it" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(taken)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert main(["train", "--task", "LaMP-4", "--data", str(data), "--model", NO_MODEL, "--w-pers", "0",
                 "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and "cannot load model" not in err


def test_train_inputs_are_checked_before_the_model_loads(tmp_path, capsys):
    data = write_lamp(tmp_path / "data", split="train")
    base = ["train", "--task", "LaMP-4", "--model", NO_MODEL, "--out", str(tmp_path / "run")]
    assert main(base + ["--data", str(tmp_path / "nowhere"), "--w-pers", "0"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "cannot load model" not in err
    assert main(base + ["--data", str(data), "--reward-model", str(tmp_path / "no-rm")]) == 2
    err = capsys.readouterr().err
    assert "is not a reward model checkpoint" in err and "cannot load model" not in err
    assert main(["sft", "--task", "LaMP-4", "--model", NO_MODEL, "--out", str(tmp_path / "sft"),
                 "--data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unwritable_out_is_refused(tmp_path, monkeypatch):
    # Tests may run as root, for whom every folder is writable: the permission is simulated.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    with pytest.raises(PrlmError, match="not writable"):
        check_output_dir(locked / "run" / "deeper")
    check_output_dir(tmp_path / "free" / "run")  # a missing folder under a writable one is fine
    assert not (tmp_path / "free").exists()  # and nothing is created by the check


def test_bad_device_and_samples_are_one_line_errors(tmp_path, capsys):
    data = write_lamp(tmp_path / "data")
    assert main(["eval", "--task", "LaMP-4", "--data", str(data), "--device", "gpu", "--model", NO_MODEL,
                 "--out", str(tmp_path / "run")]) == 2
    assert "device='gpu' is not a device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--samples", "0"])
    assert info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


# --- file modes -----------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_write_json(tmp_path / "a.json", {"x": 2})  # a rewrite too
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
