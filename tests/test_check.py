"""`prlm check CONFIG`: every committed config recognised and valid, a bad one refused in one line, no model
loaded (issue 24)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import write_lamp
from prlm.check import check_config
from prlm.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.fixture
def in_repo(monkeypatch):
    """Recipes name paths relative to the repository root, where their commands run."""
    monkeypatch.chdir(REPO)


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("prlm check loaded a model")
    for name in ("load_policy", "load_tokenizer", "load_encoder"):
        monkeypatch.setattr(f"prlm.models.{name}", refuse)


def test_every_committed_config_passes(in_repo, no_model_loads, capsys):
    assert main(["check", *(str(p.relative_to(REPO)) for p in CONFIGS)]) == 0
    out = capsys.readouterr().out
    assert out.count(", valid; ") == len(CONFIGS)


@pytest.mark.parametrize("name, kind", [
    ("cpu-demo.yaml", "study"), ("sweep-demo.yaml", "sweep"), ("lamp4-gpu-train.yaml", "train"),
    ("lamp4-gpu-eval.yaml", "eval"), ("lamp4-gpu-rm-pairs.yaml", "rm-pairs"), ("sft-commit-subject.yaml", "sft"),
    ("rm-style-pairs-commit.yaml", "rm-style-pairs"), ("rm-train-minilm.yaml", "rm-train"),
    ("accelerate-zero2.yaml", "accelerate"), ("train-commit-no-pers.yaml", "train")])
def test_the_kind_is_recognised(in_repo, name, kind):
    assert check_config(f"configs/{name}").kind.name == kind


def test_it_says_what_would_run_and_which_earlier_stage_makes_a_missing_input(tmp_path, capsys):
    demo = _bad(tmp_path, "cpu-demo.yaml", out=str(tmp_path / "demo"))
    sweep = _bad(tmp_path, "sweep-demo.yaml", data=str(tmp_path / "demo" / "data"), out=str(tmp_path / "sweep"),
                 prlm_model=str(tmp_path / "demo" / "train" / "final"))
    assert main(["check", sweep]) == 0
    out = capsys.readouterr().out
    assert f"`prlm sweep {sweep}` would run" in out and "eval-prlm-bm25-k4" in out
    assert f"reads data {tmp_path}/demo/data: not there yet: made by `prlm run {demo}`" in out
    assert f"reads prlm model {tmp_path}/demo/train/final: not there yet: made by `prlm run {demo}`" in out
    assert f"reads sft model {tmp_path}/sweep/sft/final: not there yet: made by an earlier stage of this config" in out


def _bad(tmp_path, source: str, **changes) -> str:
    values = {**yaml.safe_load((REPO / "configs" / source).read_text()), **changes}
    path = tmp_path / source
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize("source, changes, message", [
    ("lamp4-gpu-train.yaml", {"max_stepz": 3}, "unknown option 'max_stepz' (did you mean 'max_steps'?)"),
    ("lamp4-gpu-train.yaml", {"num_generations": "four"}, "num_generations must be a whole number"),
    ("lamp4-gpu-eval.yaml", {"method": "magic"}, "method='magic' is not valid"),
    ("cpu-demo.yaml", {"train": {"max_stepz": 3}}, "unknown option 'train.max_stepz'"),
    ("cpu-demo.yaml", {"rm": {"source": "style", "pairs": {"limit": 3}}}, "rm.pairs holds options of source: paper"),
    ("sweep-demo.yaml", {"ks": [0]}, "every k must be at least 1"),
])
def test_a_bad_config_exits_2_with_one_line(in_repo, no_model_loads, tmp_path, capsys, source, changes, message):
    assert main(["check", _bad(tmp_path, source, **changes)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_config_of_unclear_kind_asks_for_it(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("task: LaMP-4\ndata: somewhere\n")
    assert main(["check", str(path)]) == 2
    assert "say which with --kind KIND" in capsys.readouterr().err
    assert main(["check", str(path), "--kind", "eval"]) == 2
    assert "out is required" in capsys.readouterr().err


def test_a_synthetic_recipe_pointed_at_the_users_data_is_refused_by_the_check(in_repo, tmp_path, capsys):
    mine = write_lamp(tmp_path / "MY_DATA")
    path = _bad(tmp_path, "cpu-demo.yaml", data=str(mine), out=str(tmp_path / "run"))
    assert main(["check", path]) == 2
    assert "synthetic: null" in capsys.readouterr().err


def test_strict_refuses_missing_inputs(tmp_path, capsys):
    path = tmp_path / "eval.yaml"
    path.write_text(f"data: {tmp_path / 'nowhere'}\nout: {tmp_path / 'run'}\nmethod: rag\n")
    assert main(["check", str(path), "--kind", "eval"]) == 0
    assert "missing" in capsys.readouterr().out
    assert main(["check", str(path), "--kind", "eval", "--strict"]) == 2


def test_overrides_are_checked_as_the_command_takes_them(in_repo, tmp_path, capsys):
    mine = write_lamp(tmp_path / "MY_DATA")
    argv = ["check", "configs/cpu-demo.yaml", "--set", f"data={mine}", "--set", f"out={tmp_path / 'run'}"]
    assert main(argv) == 2
    assert "synthetic: null" in capsys.readouterr().err
    assert main(argv + ["--set", "synthetic=null"]) == 0
    assert f"reads data {mine}: ok" in capsys.readouterr().out
    assert main(["check", "configs/cpu-demo.yaml", "--set", "train.max_stepz=3"]) == 2
