import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from prlm import PrlmError
from prlm.options import load_yaml
from prlm.training.checkpoints import checkpoint_step, last_checkpoint
from prlm.training.config import TrainConfig
from prlm.training.grpo import grpo_kwargs, train_grpo

REPO = Path(__file__).resolve().parents[1]


def _tiny_cfg(data, model, out, **overrides):
    base = dict(task="synthetic", data=data, model=model, out=str(out), k=1, max_prompt_tokens=320,
                max_steps=2, prompts_per_step=1, num_generations=2, max_completion_length=6,
                learning_rate=1e-3, w_pers=0.0, save_steps=1, report_to="none", seed=0)
    return TrainConfig(**{**base, **overrides})


def length_reward(prompts, completions, **kwargs):
    """Varies within every group, so GRPO always has a signal to follow."""
    return [float(len(c)) for c in completions]


length_reward.__name__ = "length"


def test_tiny_grpo_changes_parameters_and_logs_every_term(tiny_data, tiny_llama_dir, tmp_path):
    before = load_file(str(Path(tiny_llama_dir) / "model.safetensors"))
    cfg = _tiny_cfg(tiny_data, tiny_llama_dir, tmp_path / "run", beta=0.04, sft_steps=1)
    final = train_grpo(cfg, extra_rewards=[(length_reward, 0.01)])
    after = load_file(str(final / "model.safetensors"))
    assert any(not (before[name] == after[name]).all() for name in before)
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("rewards/accuracy/mean", "rewards/format/mean", "rewards/length/mean", "reward", "reward_std",
                "frac_reward_zero_std", "kl", "completions/mean_length", "completions/clipped_ratio",
                "step_time_s", "loss"):
        assert key in rows[-1], key
    assert (tmp_path / "run" / "train_log.csv").read_text().startswith("step,")
    assert (tmp_path / "run" / "sft-model" / "config.json").is_file()
    prompts = [json.loads(line) for line in (tmp_path / "run" / "train_prompts.jsonl").read_text().splitlines()]
    assert prompts[0]["prompt"].endswith("<think>") and prompts[0]["retrieved_ids"]


def test_warmup_from_starts_grpo_from_that_policy(tiny_data, tiny_llama_dir, tmp_path):
    """An ablation reuses an earlier run's warm-up: GRPO starts from it, and no warm-up is trained."""
    import shutil

    import torch
    from safetensors.torch import save_file

    warm = tmp_path / "warm"
    shutil.copytree(tiny_llama_dir, warm)
    weights = load_file(str(warm / "model.safetensors"))
    weights = {name: value + 0.5 if name.endswith("norm.weight") else value for name, value in weights.items()}
    save_file(weights, str(warm / "model.safetensors"), metadata={"format": "pt"})
    cfg = _tiny_cfg(tiny_data, tiny_llama_dir, tmp_path / "run", warmup_from=str(warm), sft_steps=3,
                    max_steps=1, learning_rate=0.0)
    after = load_file(str(train_grpo(cfg) / "model.safetensors"))
    changed = [name for name in weights if name.endswith("norm.weight")]
    assert changed and all(torch.equal(after[name], weights[name]) for name in changed)
    assert not (tmp_path / "run" / "sft-model").exists()


def test_warmup_from_must_hold_a_model(tiny_data, tmp_path):
    with pytest.raises(PrlmError, match="sft-model folder"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, warmup_from=str(tmp_path))


def test_existing_checkpoints_need_resume(tiny_data, tiny_llama_dir, tmp_path):
    (tmp_path / "run" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{}")
    with pytest.raises(PrlmError, match="--resume"):
        train_grpo(_tiny_cfg(tiny_data, tiny_llama_dir, tmp_path / "run"))


def test_missing_reward_model_is_reported(tiny_data, tmp_path):
    from prlm.training.grpo import reward_functions

    cfg = TrainConfig(data=tiny_data, out=str(tmp_path), reward_model=str(tmp_path / "nope"))
    with pytest.raises(PrlmError, match="is not a reward model checkpoint .* or pass --w-pers 0"):
        reward_functions(cfg)


def test_config_errors_say_how_to_fix(tiny_data):
    with pytest.raises(PrlmError, match="--reward-model"):
        TrainConfig(data=tiny_data, out="o", w_pers=0.1)
    with pytest.raises(PrlmError, match="num_generations must be at least 2"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, num_generations=1)
    with pytest.raises(PrlmError, match="accuracy_metrics"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, accuracy_metrics="bleu")


def test_policy_update_levers_reach_trl(tiny_data):
    from trl import GRPOConfig

    cfg = TrainConfig(data=tiny_data, out="o", w_pers=0, epsilon_high=0.28, scale_rewards="none", num_iterations=2,
                      max_grad_norm=0.0)
    args = GRPOConfig(**grpo_kwargs(cfg))
    assert (args.epsilon, args.epsilon_high) == (0.2, 0.28)
    assert args.scale_rewards == "none" and args.num_iterations == 2 and args.max_grad_norm == 0.0
    assert GRPOConfig(**grpo_kwargs(TrainConfig(data=tiny_data, out="o", w_pers=0))).epsilon_high is None  # = epsilon
    with pytest.raises(PrlmError, match="scale_rewards"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, scale_rewards="std")
    with pytest.raises(PrlmError, match="--epsilon-high 0.28"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, epsilon_high=-1)
    with pytest.raises(PrlmError, match="num_iterations"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, num_iterations=0)
    with pytest.raises(PrlmError, match="max_grad_norm"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, max_grad_norm=-1)


def test_gpu_recipe_parses_and_builds_trainer_config():
    from trl import GRPOConfig

    cfg = TrainConfig(**load_yaml(REPO / "configs" / "gpu-train.yaml"))
    kwargs = grpo_kwargs(cfg)
    assert kwargs["use_vllm"] and kwargs["bf16"] and not kwargs["use_cpu"]
    assert kwargs["per_device_train_batch_size"] == cfg.prompts_per_step * cfg.num_generations
    # bf16 on a GPU cannot be validated on a CPU-only machine; everything else is built as is.
    args = GRPOConfig(**{**kwargs, "bf16": False, "use_cpu": True})
    assert args.use_vllm and args.vllm_mode == "colocate" and args.num_generations == 4
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}


def _train_cmd(data, model, out, *extra, max_steps=6):
    return [sys.executable, "-m", "prlm.cli", "train", "--task", "synthetic", "--data", data, "--model", model,
            "--out", str(out), "--k", "1", "--max-prompt-tokens", "320", "--max-steps", str(max_steps),
            "--prompts-per-step", "1", "--num-generations", "2", "--max-completion-length", "4",
            "--w-pers", "0", "--save-steps", "2", "--report-to", "none", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_loses_only_unsaved_steps(tiny_data, tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The first run is far too long to finish: the kill lands somewhere after checkpoint-4, wherever a loaded
    # machine lets the poll see it (a 6-step run could finish in that gap, and did).
    proc = subprocess.Popen(_train_cmd(tiny_data, tiny_llama_dir, out, max_steps=1000), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()
    saved = checkpoint_step(last_checkpoint(out))
    finish = saved + 2
    done = subprocess.run(_train_cmd(tiny_data, tiny_llama_dir, out, "--resume", max_steps=finish), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((out / "checkpoints" / f"checkpoint-{finish}" / "trainer_state.json").read_text())
    assert state["global_step"] == finish
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, finish + 1))  # steps logged after the last checkpoint were forgotten, then redone
    assert (out / "final" / "config.json").is_file()


# --- the learning curve on dev --------------------------------------------------------------------------------

def _log_rows(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_dev_curve_logs_every_evaluation_and_keeps_the_dev_best_policy(tiny_data, tiny_llama_dir, tmp_path,
                                                                       monkeypatch):
    import torch

    import prlm.training.dev_curve as dev_curve

    # The tiny model's answers score 0 everywhere; give the evaluations distinct scores so "best" means something.
    scores = iter([0.10, 0.30, 0.20])
    real = dev_curve.evaluate_policy

    def scored(*args, **kwargs):
        rows, summary = real(*args, **kwargs)
        return rows, {**summary, dev_curve.SCORE_KEY: next(scores)}

    monkeypatch.setattr(dev_curve, "evaluate_policy", scored)
    run = tmp_path / "run"
    train_grpo(_tiny_cfg(tiny_data, tiny_llama_dir, run, dev_eval_steps=1, dev_eval_limit=2, save_total_limit=5),
               extra_rewards=[(length_reward, 1.0)])  # a signal in every group: each step changes the policy

    rows = _log_rows(run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["dev/rougeL"] for r in rows] == [0.10, 0.30, 0.20]
    for key in ("dev/format_rate", "dev/answer_words", "dev/eval_time_s"):
        assert all(key in r for r in rows), key
    assert "reward" in rows[1] and "reward" not in rows[0]  # step 0 is the start policy, before any training
    for step in (0, 1, 2):
        evaluated = [json.loads(x) for x in (run / "dev_evals" / f"step-{step}.jsonl").read_text().splitlines()]
        assert len(evaluated) == 2
        assert {"id", "user_id", "answer", "gold", "rougeL", "format_ok"} <= set(evaluated[0])
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["step"] == 1 and best["score"] == 0.30
    # OUT/best holds the policy as it was after step 1 (the checkpoint saved at that step).
    kept = load_file(str(run / "best" / "model.safetensors"))
    at_step_1 = load_file(str(run / "checkpoints" / "checkpoint-1" / "model.safetensors"))
    final = load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(kept[name], at_step_1[name]) for name in kept)
    assert any(not torch.equal(kept[name], final[name]) for name in kept)
    assert (run / "best" / "tokenizer_config.json").is_file()


def test_dev_curve_scores_what_the_policy_answers(tiny_llama_dir, policy_tokenizer, monkeypatch):
    import prlm.training.dev_curve as dev_curve
    from prlm.models import load_policy

    model, tok = load_policy(tiny_llama_dir)
    questions = [dev_curve.DevQuestion("q1", "u1", "prompt one", "<think>", "fix the parser"),
                 dev_curve.DevQuestion("q2", "u2", "prompt two", "<think>", "add tests")]
    replies = {"prompt one": " the user fixes things</think><answer>fix the parser</answer>",
               "prompt two": " no answer here"}

    class Scripted:
        def __init__(self, *args):
            pass

        def generate(self, prompts, params, **kwargs):
            assert params.greedy and params.stop == ["</answer>"] and params.max_new_tokens == 7
            return [[replies[p]] for p in prompts]

    monkeypatch.setattr(dev_curve, "HFGenerator", Scripted)
    rows, summary = dev_curve.evaluate_policy(model, tok, questions, "commit-subject", max_new_tokens=7)
    assert [r["answer"] for r in rows] == ["fix the parser", ""]
    assert [r["format_ok"] for r in rows] == [True, False]
    assert summary["dev/rougeL"] == 0.5 and summary["dev/format_rate"] == 0.5
    assert summary["dev/answer_words"] == 1.5 and summary["dev/empty_answers"] == 1


def test_dev_curve_evaluates_with_the_models_own_forward(tiny_llama_dir):
    """Mixed precision patches the training model's forward (bf16 autocast); the curve must not run through it."""
    import prlm.training.dev_curve as dev_curve
    from prlm.models import load_policy

    model, tok = load_policy(tiny_llama_dir)
    questions = [dev_curve.DevQuestion("q1", "u1", "prompt one", "<think>", "fix the parser")]
    plain, _ = dev_curve.evaluate_policy(model, tok, questions, "commit-subject", max_new_tokens=5)

    def patched(*args, **kwargs):
        raise AssertionError("the patched forward ran")

    model.forward = patched
    rows, _ = dev_curve.evaluate_policy(model, tok, questions, "commit-subject", max_new_tokens=5)
    assert rows[0]["completion"] == plain[0]["completion"]
    assert model.forward is patched  # training goes on through the patch


def test_dev_curve_does_not_change_the_rollouts(tiny_data, tiny_llama_dir, tmp_path):
    """The evaluation seeds its generator; the training's sampling must go on as without it."""
    # The length of the completions' text tells which tokens were sampled (the tiny model never stops early).
    train_grpo(_tiny_cfg(tiny_data, tiny_llama_dir, tmp_path / "plain", max_steps=3, save_steps=10),
               extra_rewards=[(length_reward, 1.0)])
    train_grpo(_tiny_cfg(tiny_data, tiny_llama_dir, tmp_path / "curve", max_steps=3, save_steps=10,
                         dev_eval_steps=1, dev_eval_limit=1), extra_rewards=[(length_reward, 1.0)])
    plain = [r["rewards/length/mean"] for r in _log_rows(tmp_path / "plain") if "reward" in r]
    curve = [r["rewards/length/mean"] for r in _log_rows(tmp_path / "curve") if "reward" in r]
    assert len(plain) == 3 and curve == plain


def test_plot_learning_curve_writes_a_png(tmp_path):
    from prlm.training.dev_curve import plot_learning_curve

    rows = [{"step": 0, "dev/rougeL": 0.1, "dev/format_rate": 0.5},
            {"step": 1, "reward": 0.4, "frac_reward_zero_std": 0.5, "dev/rougeL": 0.2, "dev/format_rate": 0.9},
            {"step": 2, "reward": 0.6, "frac_reward_zero_std": 0.0}]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_learning_curve(tmp_path)
    assert png == tmp_path / "learning_curve.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "train_log.jsonl").write_text("")
    with pytest.raises(ValueError, match="nothing|no dev"):
        plot_learning_curve(tmp_path)


def test_dev_curve_options_are_validated(tiny_data):
    with pytest.raises(PrlmError, match="dev_eval_steps"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, dev_eval_steps=-1)
    with pytest.raises(PrlmError, match="dev_eval_limit"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, dev_eval_limit=-2)


# --- warm-up share / GRPO on unseen questions ----------------------------------------------------------------

def test_warmup_share_is_a_stable_hash_of_the_question_id():
    from prlm.training.grpo import in_warmup_share

    ids = [f"q{i}" for i in range(400)]
    half = [i for i in ids if in_warmup_share(i, 0.5)]
    assert 150 < len(half) < 250
    assert half == [i for i in ids if in_warmup_share(i, 0.5)]
    # Growing the share only adds questions, and the split does not depend on Python's salted hash().
    assert set(half) <= {i for i in ids if in_warmup_share(i, 0.7)}
    assert in_warmup_share("q0", 0.5) is (int.from_bytes(__import__("hashlib").sha256(b"q0").digest()[:8], "big")
                                          / 2**64 < 0.5)
    assert all(in_warmup_share(i, 1.0) for i in ids)


def test_grpo_on_unseen_questions_trains_on_what_the_warmup_did_not_see(tiny_data, tiny_llama_dir, tmp_path,
                                                                        monkeypatch):
    import prlm.training.grpo as grpo

    seen = {}
    real_warmup = grpo.supervised_warmup

    def recording_warmup(cfg, rows, model, tokenizer):
        seen["warmup"] = {r["id"] for r in rows}
        return real_warmup(cfg, rows, model, tokenizer)

    monkeypatch.setattr(grpo, "supervised_warmup", recording_warmup)
    run = tmp_path / "run"
    train_grpo(_tiny_cfg(tiny_data, tiny_llama_dir, run, sft_steps=1, warmup_share=0.5, grpo_questions="unseen",
                         max_steps=1))
    prompts = [json.loads(line) for line in (run / "train_prompts.jsonl").read_text().splitlines()]
    warmup = {p["id"] for p in prompts if p["warmup"]}
    grpo_ids = {p["id"] for p in prompts if p["grpo"]}
    assert seen["warmup"] == warmup and warmup and grpo_ids
    assert not warmup & grpo_ids and warmup | grpo_ids == {p["id"] for p in prompts}
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["questions"] == {"all": len(prompts), "warmup": len(warmup), "grpo": len(grpo_ids)}


def test_unseen_questions_need_a_partial_warmup(tiny_data):
    with pytest.raises(PrlmError, match="--warmup-share 0.5"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, sft_steps=1, grpo_questions="unseen")
    with pytest.raises(PrlmError, match="needs a warm-up"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, warmup_share=0.5, grpo_questions="unseen")
    with pytest.raises(PrlmError, match="warmup_share"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, warmup_share=0)


# --- the reward weights the trainer uses ------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [dict(w_acc=1.0, w_fmt=0.1, w_pers=0.1), dict(w_acc=0.7, w_fmt=0.3, w_pers=0.25),
                                     dict(w_acc=2.0, w_fmt=0.0, w_pers=0.0)])
def test_trainer_weighs_each_reward_term_as_configured(tiny_data, tiny_llama_dir, tmp_path, weights):
    """The weights TRL applies (trainer.reward_weights) are the config's, term by term, w_pers included."""
    from prlm.models import load_policy
    from prlm.training.grpo import build_trainer, reward_functions, split_questions, training_rows
    from test_reward_model import make_tiny_rm

    rm = make_tiny_rm(tmp_path / "rm") if weights["w_pers"] else ""
    cfg = _tiny_cfg(tiny_data, tiny_llama_dir, tmp_path / "run", reward_model=rm, **weights)
    expected = {"accuracy": weights["w_acc"], "format": weights["w_fmt"]}
    if weights["w_pers"]:
        expected["personalization"] = weights["w_pers"]
    funcs, config_weights = reward_functions(cfg)
    assert dict(zip([f.__name__ for f in funcs], config_weights)) == expected

    model, tok = load_policy(tiny_llama_dir)
    trainer = build_trainer(cfg, model, tok, split_questions(cfg, training_rows(cfg, tok))[1],
                            extra_rewards=[(length_reward, 0.05)])
    used = dict(zip(trainer.reward_func_names, trainer.reward_weights.tolist()))
    assert used == pytest.approx({**expected, "length": 0.05})


def test_unseen_questions_follow_the_split_of_the_warmup_they_start_from(tiny_data, tmp_path):
    warm = tmp_path / "earlier" / "sft-model"
    warm.mkdir(parents=True)
    (warm / "config.json").write_text("{}")
    base = dict(data=tiny_data, out="o", w_pers=0, warmup_from=str(warm), grpo_questions="unseen")
    with pytest.raises(PrlmError, match="needs the warm-up run"):
        TrainConfig(**base, warmup_share=0.5)
    (tmp_path / "earlier" / "train_config.json").write_text(json.dumps({"warmup_share": 0.3}))
    with pytest.raises(PrlmError, match="--warmup-share 0.3"):
        TrainConfig(**base, warmup_share=0.5)
    assert TrainConfig(**base, warmup_share=0.3).warmup_share == 0.3


def test_a_context_reward_model_gets_each_users_past_outputs(tiny_data, tmp_path):
    from prlm.data import load_split
    from prlm.reward.model import RM_FORMAT
    from prlm.training.grpo import reward_context_column

    rm = tmp_path / "rm"
    rm.mkdir()
    saved = {"format": RM_FORMAT, "backbone": "minilm", "max_length": 128, "model_type": "bert"}
    (rm / "prlm_rm_config.json").write_text(json.dumps({**saved, "context_entries": 2}))
    cfg = TrainConfig(task="synthetic", data=tiny_data, out=str(tmp_path / "o"), w_pers=0.1, reward_model=str(rm),
                      report_to="none")
    examples = load_split(tiny_data, "train", "synthetic").examples
    contexts = reward_context_column(cfg, examples)
    assert len(contexts) == len(examples)
    for ex, context in zip(examples, contexts):
        own_outputs = {e["title"] for e in ex.profile}
        assert 0 < len(context) <= 2 and set(context) <= own_outputs  # only this user's past outputs
    (rm / "prlm_rm_config.json").write_text(json.dumps({**saved, "context_entries": 0}))
    assert reward_context_column(cfg, examples) is None
    assert reward_context_column(TrainConfig(task="synthetic", data=tiny_data, out="o", w_pers=0.0,
                                             report_to="none"), examples) is None


@pytest.mark.parametrize("reject", [False, True])
def test_the_format_term_rejects_degenerate_answers_when_configured(tiny_data, tmp_path, reject):
    from prlm.training.grpo import reward_functions

    cfg = TrainConfig(data=tiny_data, out=str(tmp_path / "o"), w_pers=0, format_rejects_degenerate=reject)
    funcs, _ = reward_functions(cfg)
    fmt = dict(zip([f.__name__ for f in funcs], funcs))["format"]
    parroted = " r</think><answer>The user ... The text is about ...</answer>"
    assert fmt([""], [parroted]) == [0.0 if reject else 1.0]


def test_answer_only_rewards_read_the_prefilled_reply(tiny_data, tmp_path):
    """With the answer-only wording the completion is the answer alone: both terms must read it as such."""
    from prlm.training.grpo import reward_functions

    cfg = TrainConfig(data=tiny_data, out=str(tmp_path / "o"), w_pers=0, prompt="prlm-answer-only")
    funcs, _ = reward_functions(cfg)
    terms = dict(zip([f.__name__ for f in funcs], funcs))
    assert terms["format"]([""], ["fix the parser</answer>"]) == [1.0]
    assert terms["accuracy"]([""], ["fix the parser</answer>"], gold=["fix the parser"])[0] == pytest.approx(3.0)
    with pytest.raises(PrlmError, match="--sft-steps 0"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, prompt="prlm-answer-only", sft_steps=4)
