"""The user's own data, safely (issue 24): prlm never overwrites a folder it did not make, refuses a
request that would give a half-made file, and stops on Ctrl-C with one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from helpers import write_lamp
from prlm import PrlmError
from prlm.cli import main
from prlm.io import OUTPUT_MARKER, check_output_dir, claim_output_dir
from prlm.study import check_data_folder, load_study_config

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = "prlm-test-nobody/never-loaded"


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- nothing the user made is overwritten ----------------------------------------

def test_the_demo_recipe_pointed_at_a_users_dataset_refuses_instead_of_overwriting(tmp_path, capsys, monkeypatch):
    # Were the refusal missing, the study's stages would run (minutes of training): they are stubbed.
    monkeypatch.setattr("prlm.study.run_stages", lambda out, stages: {s.name: "ran" for s in stages})
    mine = write_lamp(tmp_path / "MY_DATA")
    before = _digest(mine)
    argv = ["run", str(REPO / "configs" / "cpu-demo.yaml"), "--set", f"out={tmp_path / 'run'}",
            "--set", f"data={mine}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files prlm did not make" in err and "synthetic: null" in err
    assert _digest(mine) == before and not (tmp_path / "run").exists()
    # The fix the error names: the recipe then reads the folder as its data.
    check_data_folder(load_study_config(str(REPO / "configs" / "cpu-demo.yaml"),
                                        [f"out={tmp_path / 'run'}", f"data={mine}", "synthetic=null"]))


def test_data_synth_refuses_a_users_folder_and_rewrites_its_own(tmp_path, capsys):
    mine = write_lamp(tmp_path / "mine")
    before = _digest(mine)
    assert main(["data", "synth", "--out", str(mine), "--num-users", "3"]) == 2
    assert "holds files prlm did not make" in capsys.readouterr().err and _digest(mine) == before
    made = tmp_path / "synthetic"
    assert main(["data", "synth", "--out", str(made), "--num-users", "3"]) == 0
    assert (made / OUTPUT_MARKER).is_file()
    assert main(["data", "synth", "--out", str(made), "--num-users", "4"]) == 0  # its own folder: rewritten


def test_eval_refuses_an_out_folder_with_the_users_files_before_the_model_loads(tmp_path, capsys):
    data = write_lamp(tmp_path / "data")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("months of work")
    assert main(["eval", "--task", "LaMP-4", "--data", str(data), "--model", NO_MODEL, "--out", str(notes)]) == 2
    err = capsys.readouterr().err
    assert "holds files prlm did not make" in err and "cannot load model" not in err
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.tex"]


def test_a_dataset_another_command_made_is_not_overwritten_either(tmp_path):
    made = tmp_path / "from-git"
    claim_output_dir(made, "prlm data from-git")
    (made / "train_questions.json").write_text("[]")
    cfg = load_study_config(str(REPO / "configs" / "cpu-demo.yaml"), [f"out={tmp_path / 'run'}", f"data={made}"])
    with pytest.raises(PrlmError, match="was made by `prlm data from-git`.*synthetic: null"):
        check_data_folder(cfg)
    claim_output_dir(made, "prlm data from-git")  # its own maker may write it again


def test_folders_made_by_prlm_before_the_marker_are_still_its_own(tmp_path):
    legacy_run = tmp_path / "run"
    legacy_run.mkdir()
    (legacy_run / "summary.json").write_text("{}")
    check_output_dir(legacy_run)
    legacy_data = tmp_path / "data"
    legacy_data.mkdir()
    (legacy_data / "meta.json").write_text(json.dumps({"generator": "prlm.data.synthetic"}))
    check_output_dir(legacy_data)
    (legacy_data / "meta.json").write_text(json.dumps({"made by": "me"}))
    with pytest.raises(PrlmError, match="did not make"):
        check_output_dir(legacy_data)
    assert claim_output_dir(tmp_path / "empty", "test") == tmp_path / "empty"
    assert json.loads((tmp_path / "empty" / OUTPUT_MARKER).read_text())["made_by"] == "test"


@pytest.mark.parametrize("root", ["/proc", "/sys"])
def test_out_under_proc_or_sys_is_refused_by_a_test_write(root):
    if not Path(root).is_dir():
        pytest.skip(f"no {root} here")
    # As root every folder passes os.access; only writing a file tells.
    with pytest.raises(PrlmError, match="not writable"):
        check_output_dir(f"{root}/prlm-run")


# --- refusals instead of half-made files -------------------------------------------

def test_a_partial_lamp_submission_is_refused_unless_asked_for(tmp_path, capsys):
    data = write_lamp(tmp_path / "data")
    argv = ["eval", "--task", "LaMP-4", "--data", str(data), "--predict-only", "--limit", "2", "--model", NO_MODEL,
            "--out", str(tmp_path / "submission")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--allow-partial" in err and "cannot load model" not in err
    assert not (tmp_path / "submission").exists()
    assert main(argv + ["--allow-partial"]) == 2  # allowed: it gets as far as loading the (missing) model
    assert "--allow-partial" not in capsys.readouterr().err


def test_data_check_fails_on_an_empty_split_and_reports_the_longest_gold(tmp_path, capsys):
    from helpers import lamp4_questions

    questions, outputs = lamp4_questions()
    outputs["golds"][2]["output"] = "a gold that runs on for many more words than a headline would"
    data = write_lamp(tmp_path / "data", questions=questions, outputs=outputs)
    assert main(["data", "check", str(data), "--task", "LaMP-4"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out.splitlines()[0])
    assert stats["gold_words_max"] == 13 and stats["longest_gold_id"] == "q2"
    assert "the longest gold has 13 words (dev 'q2')" in out
    write_lamp(data, split="test", questions=[], outputs={"task": "LaMP_4", "golds": []})
    assert main(["data", "check", str(data), "--task", "LaMP-4"]) == 2
    assert "split 'test' has no questions" in capsys.readouterr().err


# --- Ctrl-C --------------------------------------------------------------------------

_SLOW_WORK = """
import sys, time
import prlm.data.lamp, prlm.pipeline, prlm.study, prlm.sweep
from prlm.cli import main

def slow(*args, **kwargs):
    print("working", flush=True)
    time.sleep(120)

prlm.pipeline.run_eval = prlm.study.run_study = prlm.sweep.run_sweep = prlm.data.lamp.check_splits = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["eval", "run", "sweep", "data check"])
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, command):
    """A real SIGINT, sent while the command works (its work replaced by a sleep so the test is quick)."""
    import os
    import signal
    import subprocess
    import sys

    data = write_lamp(tmp_path / "data")
    argv = {"eval": ["eval", "--task", "LaMP-4", "--data", str(data), "--out", str(tmp_path / "run")],
            "run": ["run", str(REPO / "configs" / "cpu-demo.yaml"), "--set", f"out={tmp_path / 'study'}"],
            "sweep": ["sweep", str(REPO / "configs" / "sweep-demo.yaml"), "--set", f"out={tmp_path / 'sweep'}"],
            "data check": ["data", "check", str(data)]}[command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WORK, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "working"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert [line for line in err.splitlines() if line.strip()] == [
        "prlm: interrupted; run the same command again to resume"]


# --- LaMP's aggregation ----------------------------------------------------------------

def test_lamp_aggregation_is_the_seeded_median_of_1000_bootstrap_means():
    import numpy as np

    from prlm.evaluation import lamp_aggregate

    rng = np.random.default_rng(3)
    scores = rng.random((40, 2))
    per_example = {f"q{i}": {"rouge1": a, "rougeL": b} for i, (a, b) in enumerate(scores)}
    first = lamp_aggregate(per_example, seed=7)
    assert lamp_aggregate(per_example, seed=7) == first  # fixed seed: one number per run
    # LaMP's evaluator's number, re-derived: numpy's global generator draws 1,000 resamples of the questions
    # for each metric in turn, and the median of their means is reported.
    np.random.seed(7)
    for column, key in enumerate(("rouge1", "rougeL")):
        means = [scores[np.random.choice(np.arange(40), size=40), column].mean() for _ in range(1000)]
        assert first[key] == pytest.approx(np.percentile(means, 50))
    assert first["rouge1"] != pytest.approx(scores[:, 0].mean(), abs=1e-9)  # not the plain mean


def test_eval_reports_lamps_aggregation_beside_the_plain_means(tmp_path, tiny_llama_dir, capsys):
    data = write_lamp(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["eval", "--task", "LaMP-4", "--data", str(data), "--method", "no-profile", "--model", tiny_llama_dir,
                 "--max-new-tokens", "4", "--backend", "hf", "--device", "cpu", "--out", str(out),
                 "--lamp-aggregation"]) == 0
    assert "LaMP's aggregation (median of 1000 bootstrap means, seed 0): rouge1" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["lamp_aggregation"]) == {"rouge1", "rougeL"} and "rouge1" in summary["metrics"]
