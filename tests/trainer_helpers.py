"""A prefix-sharing GRPO trainer on a tiny policy and one prepared batch, for tests of its loss and gradients."""

from __future__ import annotations

import torch
from datasets import Dataset

from prlm.models import load_policy
from prlm.training.config import TrainConfig
from prlm.training.grpo import grpo_args
from prlm.training.prefix_sharing import PrefixSharingGRPOTrainer

PROMPTS = ["a much longer prompt with many more words than the other ones", "a short prompt",
           "a prompt of middling length"]  # input order differs from torch.unique's (sorted) order


def reward_by_length(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def trainer_and_batch(policy_dir: str, tmp_path, **overrides):
    """The trainer (3 prompts x 2 completions of 8 tokens, TrainConfig `overrides`) and its first batch."""
    model, tok = load_policy(policy_dir)
    cfg = TrainConfig(**{**dict(task="synthetic", data=str(tmp_path), model=policy_dir, out=str(tmp_path / "run"),
                                prompts_per_step=3, num_generations=2, max_completion_length=8, w_pers=0.0,
                                report_to="none", temperature=1.0), **overrides})
    trainer = PrefixSharingGRPOTrainer(model=model, reward_funcs=[reward_by_length], args=grpo_args(cfg),
                                       train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
                                       processing_class=tok)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which these tests do not run
    return trainer, trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def grad_close(shared: torch.Tensor, stock: torch.Tensor) -> bool:
    """Equal up to float32 rounding at the gradient's own scale (the peaked model's run into the hundreds)."""
    return torch.allclose(shared, stock, atol=1e-5 * max(1.0, stock.abs().max().item()), rtol=1e-4)
