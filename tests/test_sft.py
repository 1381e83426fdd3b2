"""sft with its step count chosen on dev: the curve, OUT/best, the options."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prlm import PrlmError
from prlm.options import load_yaml
from prlm.training.sft import SFTConfig, train_sft

REPO = Path(__file__).resolve().parents[1]


def _cfg(data, model, out, **overrides):
    base = dict(task="synthetic", data=data, model=model, out=str(out), k=1, max_prompt_tokens=320,
                max_answer_tokens=8, max_steps=3, batch_size=2, learning_rate=1e-2, seed=0)
    return SFTConfig(**{**base, **overrides})


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_sft_dev_curve_keeps_the_model_of_the_best_row(tiny_data, tiny_llama_dir, tmp_path, monkeypatch):
    import prlm.training.dev_curve as dev_curve

    # The tiny model scores 0 everywhere; give the evaluations distinct scores so "best" means something.
    scores = iter([0.10, 0.30, 0.20])
    real = dev_curve.evaluate_policy
    methods = []

    def scored(*args, **kwargs):
        methods.append(args[6])
        rows, summary = real(*args, **kwargs)
        return rows, {**summary, dev_curve.SCORE_KEY: next(scores)}

    monkeypatch.setattr(dev_curve, "evaluate_policy", scored)
    run = tmp_path / "run"
    train_sft(_cfg(tiny_data, tiny_llama_dir, run, dev_eval_steps=1, dev_eval_limit=2))

    curve = [json.loads(line) for line in (run / "dev_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [1, 2, 3]  # one row per evaluation step, no step 0
    assert [r["dev/rougeL"] for r in curve] == [0.10, 0.30, 0.20]
    assert all("dev/answer_words" in r and "dev/format_rate" not in r for r in curve)
    assert methods == ["rag"] * 3
    evaluated = [json.loads(x) for x in (run / "dev_evals" / "step-2.jsonl").read_text().splitlines()]
    assert len(evaluated) == 2 and "<think>" not in evaluated[0]["completion"]
    summary = json.loads((run / "sft_summary.json").read_text())
    assert summary["steps"] == 3
    assert summary["best"]["step"] == 2 and summary["best"]["dev_rougeL"] == 0.30
    assert [r["step"] for r in summary["dev_curve"]] == [1, 2, 3]
    # OUT/best holds the model after step 2: the same as a run stopped there; OUT/final the last step.
    reference = train_sft(_cfg(tiny_data, tiny_llama_dir, tmp_path / "two-steps", max_steps=2))
    kept, at_step_2, final = _weights(run / "best"), _weights(reference), _weights(run / "final")
    assert all(torch.equal(kept[name], at_step_2[name]) for name in kept)
    assert any(not torch.equal(kept[name], final[name]) for name in kept)
    assert (run / "best" / "tokenizer_config.json").is_file()


class _Recorder:
    """Stands in for the model saver: remembers which step each save of OUT/best came from."""

    def __init__(self):
        self.saved = []

    def __call__(self, model, tokenizer, folder):
        folder.mkdir(parents=True)
        self.saved.append(model)


@pytest.mark.parametrize("scores, best_step", [
    ([0.2, 0.5, 0.5, 0.4], 2),   # a tie keeps the earlier step
    ([0.6, 0.1, 0.6, 0.6], 1),   # the first is best and never equalled upwards
    ([0.1, 0.2, 0.3, 0.4], 4),   # rising: the last
    ([0.0, 0.0, 0.0, 0.0], 1),   # all equal (the tiny model's zeros): the first
])
def test_dev_best_is_the_first_step_with_the_highest_score(tmp_path, monkeypatch, scores, best_step):
    import prlm.training.dev_curve as dev_curve

    recorder = _Recorder()
    score_of = dict(zip(range(1, 5), scores))
    monkeypatch.setattr(dev_curve, "_save_policy", recorder)
    monkeypatch.setattr(dev_curve, "evaluate_policy", lambda model, *a: ([], {dev_curve.SCORE_KEY: score_of[model],
                                                                             "dev/answer_words": 1.0}))
    cfg = _cfg("unused", "unused", tmp_path, dev_eval_steps=1)
    curve = dev_curve.SftDevCurve(cfg, [], dev_curve.CurveLog(tmp_path / dev_curve.CURVE_FILE))
    for step in range(1, 5):
        curve.record(step, curve.evaluate(step, step, None))  # the "model" is its step
    assert recorder.saved[-1] == best_step
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["step"] == best_step and best["score"] == max(scores)
    assert [r["step"] for r in curve.log.rows] == [1, 2, 3, 4]


def test_dev_options_are_validated(tiny_data):
    with pytest.raises(PrlmError, match="dev_eval_steps must be >= 0"):
        SFTConfig(data=tiny_data, out="o", dev_eval_steps=-1)
    with pytest.raises(PrlmError, match="dev_eval_limit must be at least 1"):
        SFTConfig(data=tiny_data, out="o", dev_eval_limit=0)
    with pytest.raises(PrlmError, match="dev_max_new_tokens must be at least 1"):
        SFTConfig(data=tiny_data, out="o", dev_max_new_tokens=0)


def test_devsel_recipe_is_the_plain_recipe_with_dev_selection():
    plain = load_yaml(REPO / "configs" / "sft-commit-subject.yaml")
    devsel = load_yaml(REPO / "configs" / "sft-commit-subject-devsel.yaml")
    added = {"dev_eval_steps": 20, "dev_eval_limit": 40, "dev_max_new_tokens": 32, "out": "runs/final/git-sft"}
    assert {k: v for k, v in devsel.items() if k not in added} == {k: v for k, v in plain.items() if k != "out"}
    assert {k: devsel[k] for k in added} == added
    cfg = SFTConfig(**devsel)
    assert cfg.max_steps % cfg.dev_eval_steps == 0  # the candidates are 20, 40 and 60


def test_micro_batches_make_the_same_update_as_one_pass(tiny_data, tiny_llama_dir, tmp_path):
    """Gradient accumulation over micro-batches is the same optimisation step as the whole batch at once, up to
    float summation order: the option saves memory and time, not the result. Adam moves each weight by about the
    learning rate (1e-2) a step, so a tenth of it is far above rounding (7e-5 measured) and far below a changed
    update."""
    one_pass = _weights(train_sft(_cfg(tiny_data, tiny_llama_dir, tmp_path / "one", max_steps=2, batch_size=4)))
    micro = _weights(train_sft(_cfg(tiny_data, tiny_llama_dir, tmp_path / "micro", max_steps=2, batch_size=4,
                                    micro_batch=1)))
    start = _weights_of_model(tiny_llama_dir)
    assert any(not torch.allclose(one_pass[n], start[n]) for n in one_pass)  # the steps did move the weights
    assert max((one_pass[n] - micro[n]).abs().max().item() for n in one_pass) < 1e-3


def _weights_of_model(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.mark.parametrize("micro", [-1, 3])
def test_micro_batch_must_divide_the_batch(tiny_data, micro):
    with pytest.raises(PrlmError, match="micro_batch must divide"):
        _cfg(tiny_data, "m", "o", batch_size=4, micro_batch=micro)


def test_the_reasoning_format_trains_and_chooses_the_start_grpo_begins_from(tiny_data, tiny_llama_dir, tmp_path,
                                                                            monkeypatch):
    """completion_format reasoning: the prlm prompt, the warm-up's <think> then the real output in <answer>,
    and a dev curve prompted and scored as GRPO's (with a format rate)."""
    import prlm.training.dev_curve as dev_curve
    from prlm.answers import REASONING_METHOD
    from prlm.models import load_policy
    from prlm.training.sft import sft_rows

    cfg = _cfg(tiny_data, tiny_llama_dir, tmp_path / "run", completion_format="reasoning", max_answer_tokens=64,
               dev_eval_steps=2, dev_eval_limit=2, dev_max_new_tokens=8)
    _, tok = load_policy(tiny_llama_dir)
    rows, plain = sft_rows(cfg, tok), sft_rows(_cfg(tiny_data, tiny_llama_dir, tmp_path / "plain"), tok)
    assert [r["id"] for r in rows] == [r["id"] for r in plain]
    for row, answer_only in zip(rows, plain):
        assert row["completion"].rstrip().endswith(f"<answer>{answer_only['completion']}</answer>")
        assert "</think>" in row["completion"] and row["prompt"] != answer_only["prompt"]

    methods = []
    real = dev_curve.evaluate_policy
    monkeypatch.setattr(dev_curve, "evaluate_policy", lambda *a, **k: methods.append(a[6]) or real(*a, **k))
    train_sft(cfg)
    curve = [json.loads(line) for line in (tmp_path / "run" / "dev_curve.jsonl").read_text().splitlines()]
    assert methods == [REASONING_METHOD] * 2 and all("dev/format_rate" in r for r in curve)
    with pytest.raises(PrlmError, match="completion_format"):
        _cfg(tiny_data, tiny_llama_dir, tmp_path / "bad", completion_format="think")


def test_a_killed_sft_run_resumes_to_the_uninterrupted_model(tiny_data, tiny_llama_dir, tmp_path, monkeypatch):
    """Killed after step 3 with a checkpoint at step 2, the run resumed with --resume trains steps 3 and 4 only
    and ends with the weights of the run never killed."""
    from transformers import TrainerCallback

    import prlm.training.sft as sft

    uninterrupted = _weights(train_sft(_cfg(tiny_data, tiny_llama_dir, tmp_path / "whole", max_steps=4)))

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt  # as a SIGINT between steps

    steps_run = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_run.append(state.global_step)

    real = sft.sft_trainer
    extra = [Kill()]
    monkeypatch.setattr(sft, "sft_trainer", lambda *a, **k: _with(real(*a, **k), extra))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_sft(_cfg(tiny_data, tiny_llama_dir, run, max_steps=4, save_steps=2))
    assert not (run / "final").exists() and (run / "checkpoints" / "checkpoint-2").is_dir()
    with pytest.raises(PrlmError, match="--resume"):  # checkpoints are not trained over by accident
        train_sft(_cfg(tiny_data, tiny_llama_dir, run, max_steps=4, save_steps=2))

    extra[:] = [Count()]
    final = train_sft(_cfg(tiny_data, tiny_llama_dir, run, max_steps=4, save_steps=2, resume=True))
    assert steps_run == [3, 4]
    summary = json.loads((run / "sft_summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2
    resumed = _weights(final)
    assert all(torch.allclose(resumed[name], uninterrupted[name], atol=1e-6) for name in resumed)


def _with(trainer, callbacks):
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def test_resume_does_not_continue_a_dev_curve(tiny_data, tiny_llama_dir, tmp_path):
    with pytest.raises(PrlmError, match="--dev-eval-steps 0"):
        _cfg(tiny_data, tiny_llama_dir, tmp_path / "run", resume=True, dev_eval_steps=2)
