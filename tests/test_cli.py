import json

import pytest
import yaml

from helpers import write_lamp
from prlm import PrlmError
from prlm.cli import build_parser, main
from prlm.options import build_config
from prlm.pipeline import EvalConfig


def test_every_command_has_help(capsys):
    for argv in (["--help"], ["eval", "--help"], ["compare", "--help"], ["data", "--help"],
                 ["data", "synth", "--help"], ["data", "check", "--help"], ["train", "--help"],
                 ["run", "--help"], ["rescore", "--help"], ["rm", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 0
        assert "usage: prlm" in capsys.readouterr().out


def test_eval_help_lists_config_fields(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    out = capsys.readouterr().out
    for flag in ("--retriever", "--max-prompt-tokens", "--k", "--config", "Profile retriever"):
        assert flag in out


def test_config_validation_messages():
    with pytest.raises(PrlmError, match="retriever='tfidf' is not valid"):
        EvalConfig(data="d", out="o", retriever="tfidf")
    with pytest.raises(PrlmError, match="data is required"):
        EvalConfig(out="o")
    with pytest.raises(PrlmError, match="unknown option 'kk' \\(did you mean 'k'\\?\\)"):
        build_config(EvalConfig, {"kk": 3, "data": "d", "out": "o"})
    cfg = EvalConfig(data="d", out="o", method="no-profile", retriever="bm25", k=4)
    assert (cfg.retriever, cfg.k) == ("none", 0)


def test_yaml_then_flags_override(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"k": 8, "retriever": "recency", "data": "d", "out": "o"}))
    args = build_parser().parse_args(["eval", "--config", str(tmp_path / "c.yaml"), "--k", "2"])
    from prlm.options import config_from_args
    cfg = config_from_args(EvalConfig, args)
    assert (cfg.k, cfg.retriever, cfg.data) == (2, "recency", "d")


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prlm: error:") and err.count("\n") == 1
    (tmp_path / "dev_questions.json").write_text("[{]")
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "dev_questions.json: line 1" in capsys.readouterr().err


def test_eval_and_compare_end_to_end_with_tiny_model(tmp_path, tiny_llama_dir, capsys):
    data = write_lamp(tmp_path / "data")
    runs = {}
    for method in ("no-profile", "rag", "prlm"):
        out = tmp_path / method
        code = main(["eval", "--task", "LaMP-4", "--data", str(data), "--split", "dev", "--method", method,
                     "--retriever", "bm25", "--k", "2", "--model", tiny_llama_dir, "--max-new-tokens", "4",
                     "--backend", "hf", "--device", "cpu", "--out", str(out)])
        assert code == 0
        runs[method] = out
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]
        for key in ("user_id", "retrieved", "prompt", "completion", "reasoning", "answer", "gold", "metrics"):
            assert key in rows[0]
        assert len(rows[0]["retrieved"]) == (0 if method == "no-profile" else 2)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n"] == 4 and {"rouge1", "rougeL", "rouge2"} <= set(summary["metrics"])
        assert summary["config"]["model"] == tiny_llama_dir and "torch" in summary["environment"]["versions"]
        assert (out / "summary.md").read_text().startswith("| run |")
    assert main(["compare", str(runs["no-profile"]), str(runs["rag"])]) == 0
    assert "95% CI" in capsys.readouterr().out


def test_data_synth_and_check(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--num-users", "5", "--profile-size", "4",
                 "--questions-per-user", "2,1,1"]) == 0
    assert main(["data", "check", str(tmp_path), "--task", "synthetic"]) == 0
    lines = capsys.readouterr().out.splitlines()
    stats = [json.loads(line) for line in lines if line.startswith("{")]
    assert [s["questions"] for s in stats] == [10, 5, 5]


def test_serve_without_the_serving_extra_says_how_to_install(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "prlm.serving.app", None)  # as if fastapi were missing
    assert main(["serve", "--model", "smollm2-135m"]) == 2
    assert "pip install 'prlm[serve]'" in capsys.readouterr().err


def test_tensorboard_logging_without_the_extra_is_refused(monkeypatch, tmp_path):
    import importlib.util

    from prlm.training.config import TrainConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    data = write_lamp(tmp_path / "data", split="train")
    with pytest.raises(PrlmError, match="report_to: none"):
        TrainConfig(task="LaMP-4", data=str(data), out=str(tmp_path / "o"), w_pers=0.0)
    TrainConfig(task="LaMP-4", data=str(data), out=str(tmp_path / "o"), w_pers=0.0, report_to="none")
