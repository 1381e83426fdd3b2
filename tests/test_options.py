"""Config mistakes a new user makes: each exits 2 with one line naming the key, before any work starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from prlm import PrlmError
from prlm.cli import main
from prlm.options import apply_overrides, build_config, opt
from prlm.pipeline import EvalConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work replaced by a failure: a config mistake must stop the command before it."""
    import prlm.pipeline
    import prlm.study
    import prlm.sweep
    import prlm.training.grpo

    def started(*args, **kwargs):
        raise AssertionError("the command started its work although its config is wrong")

    for module, name in [(prlm.study, "run_study"), (prlm.sweep, "run_sweep"), (prlm.training.grpo, "train_grpo"),
                         (prlm.pipeline, "run_eval")]:
        monkeypatch.setattr(module, name, started)


def _one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _write(tmp_path, name: str, values: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def _demo_recipe(tmp_path, **changes) -> str:
    values = yaml.safe_load((REPO / "configs" / "cpu-demo.yaml").read_text(encoding="utf-8"))
    values["out"] = str(tmp_path / "run")
    for key, value in changes.items():
        values[key] = value
    return _write(tmp_path, "recipe.yaml", values)


@pytest.mark.parametrize("k, expected", [("four", "k must be a whole number, got 'four'"),
                                         (2.5, "k must be a whole number, got 2.5")])
def test_a_wrongly_typed_value_in_a_yaml_file(tmp_path, capsys, no_work, k, expected):
    config = _write(tmp_path, "train.yaml", {"data": str(tmp_path), "out": str(tmp_path / "o"), "k": k, "w_pers": 0})
    assert expected in _one_line_error(capsys, main(["train", "--config", config]))


def test_a_typo_in_an_override_names_the_nearest_key(tmp_path, capsys, no_work):
    err = _one_line_error(capsys, main(["run", _demo_recipe(tmp_path), "--set", "train.max_stpes=5"]))
    assert "unknown option 'train.max_stpes' (did you mean 'max_steps'?)" in err


def test_a_wrongly_typed_override(tmp_path, capsys, no_work):
    err = _one_line_error(capsys, main(["run", _demo_recipe(tmp_path), "--set", "train.max_steps=abc"]))
    assert "train.max_steps must be a whole number, got 'abc'" in err


def test_a_typo_inside_the_synthetic_section(tmp_path, capsys, no_work):
    recipe = _demo_recipe(tmp_path, synthetic={"num_user": 40})
    err = _one_line_error(capsys, main(["run", recipe]))
    assert "unknown option 'synthetic.num_user' (did you mean 'num_users'?)" in err


def test_a_typo_inside_the_reward_model_section(tmp_path, capsys, no_work):
    recipe = _demo_recipe(tmp_path, rm={"pairs": {"limt": 48}, "train": {"epochs": 2}})
    err = _one_line_error(capsys, main(["run", recipe]))
    assert "unknown option 'rm.pairs.limt' (did you mean 'limit'?)" in err


def test_an_override_that_is_not_yaml(tmp_path, capsys, no_work):
    sweep = _write(tmp_path, "sweep.yaml", {"out": str(tmp_path / "s"), "data": str(tmp_path), "methods": ["rag"]})
    err = _one_line_error(capsys, main(["sweep", sweep, "--set", "ks=[1,"]))
    assert "override 'ks=[1,': the value is not valid YAML" in err


def test_a_renamed_option_says_its_new_name(tmp_path, capsys, no_work):
    err = _one_line_error(capsys, main(["run", _demo_recipe(tmp_path, eval_limit=10)]))
    assert "unknown option 'eval_limit': it was renamed 'limit'" in err


def test_a_wrongly_typed_command_line_flag(tmp_path, capsys, no_work):
    err = _one_line_error(capsys, main(["eval", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--k", "x"]))
    assert "k must be a whole number, got 'x'" in err


def test_values_are_coerced_to_the_field_type():
    cfg = build_config(EvalConfig, {"data": "d", "out": "o", "k": "8", "temperature": 1, "top_p": "0.5"})
    assert (cfg.k, cfg.temperature, cfg.top_p) == (8, 1.0, 0.5)
    assert isinstance(cfg.temperature, float)


def test_a_boolean_is_not_a_number():
    with pytest.raises(PrlmError, match="k must be a whole number, got True"):
        build_config(EvalConfig, {"data": "d", "out": "o", "k": True})


def test_sections_are_checked_however_deep():
    @dataclasses.dataclass
    class Inner:
        steps: int = opt(1, "steps")

    @dataclasses.dataclass
    class Outer:
        inner: dict = opt(None, "an inner section", section=Inner)

    assert build_config(Outer, {"inner": {"steps": "3"}}).inner == {"steps": 3}
    with pytest.raises(PrlmError, match="inner must be a mapping of option: value"):
        build_config(Outer, {"inner": [1]})
    with pytest.raises(PrlmError, match="inner.steps must be a whole number"):
        build_config(Outer, {"inner": {"steps": 1.5}})


def test_overrides_reach_sections_and_refuse_to_descend_into_a_value():
    values = apply_overrides({"train": {"max_steps": 4}, "k": 4}, ["train.max_steps=5", "rm.model=x"])
    assert values == {"train": {"max_steps": 5}, "k": 4, "rm": {"model": "x"}}
    with pytest.raises(PrlmError, match="'k' is not a section"):
        apply_overrides({"k": 4}, ["k.x=1"])


def test_every_recipe_in_configs_loads():
    """Every committed recipe passes the typed check of its command's config."""
    from prlm.options import check_values
    from prlm.study import StudyConfig
    from prlm.sweep import SweepConfig

    for path in sorted((REPO / "configs").glob("*.yaml")):
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if path.name.startswith("sweep-"):
            check_values(SweepConfig, values, path.name)
        elif "train" in values and isinstance(values["train"], dict):
            check_values(StudyConfig, values, path.name)
