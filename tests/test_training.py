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
from prlm.config import load_yaml
from prlm.data.synthetic import write_synthetic
from prlm.training.config import TrainConfig
from prlm.training.grpo import grpo_kwargs, train_grpo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    write_synthetic(folder, num_users=4, profile_size=2, questions_per_user=(2, 1, 1))
    return str(folder)


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
                "frac_reward_zero_std", "kl", "completions/mean_length", "step_time_s", "loss"):
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
    with pytest.raises(PrlmError, match="not a checkpoint"):
        reward_functions(cfg)


def test_config_errors_say_how_to_fix(tiny_data):
    with pytest.raises(PrlmError, match="--reward-model"):
        TrainConfig(data=tiny_data, out="o", w_pers=0.1)
    with pytest.raises(PrlmError, match="num_generations must be at least 2"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, num_generations=1)
    with pytest.raises(PrlmError, match="accuracy_metrics"):
        TrainConfig(data=tiny_data, out="o", w_pers=0, accuracy_metrics="bleu")


def test_gpu_recipe_parses_and_builds_trainer_config():
    from trl import GRPOConfig

    cfg = TrainConfig(**load_yaml(REPO / "configs" / "gpu-train.yaml"))
    kwargs = grpo_kwargs(cfg)
    assert kwargs["use_vllm"] and kwargs["bf16"] and not kwargs["use_cpu"]
    assert kwargs["per_device_train_batch_size"] == cfg.prompts_per_step * cfg.num_generations
    # bf16 on a GPU cannot be validated on a CPU-only machine; everything else is built as is.
    args = GRPOConfig(**{**kwargs, "bf16": False, "use_cpu": True})
    assert args.use_vllm and args.vllm_mode == "colocate" and args.num_generations == 4
    assert args.lr_scheduler_type == "cosine"


def _train_cmd(data, model, out, *extra):
    return [sys.executable, "-m", "prlm.cli", "train", "--task", "synthetic", "--data", data, "--model", model,
            "--out", str(out), "--k", "1", "--max-prompt-tokens", "320", "--max-steps", "6",
            "--prompts-per-step", "1", "--num-generations", "2", "--max-completion-length", "4",
            "--w-pers", "0", "--save-steps", "2", "--report-to", "none", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_loses_only_unsaved_steps(tiny_data, tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_train_cmd(tiny_data, tiny_llama_dir, out), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()
    done = subprocess.run(_train_cmd(tiny_data, tiny_llama_dir, out, "--resume"), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (out / "final" / "config.json").is_file()
