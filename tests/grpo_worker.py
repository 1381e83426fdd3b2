"""One GRPO training run of `prlm train`'s code, for tests/test_multiprocess.py.

Run as `python tests/grpo_worker.py ARGS` (one process) or under
`torchrun --nproc_per_node 2` (two CPU processes, gloo). Three things are
added for the comparison, nothing else changes:
- a reward (`letter_share`) through train_grpo's `extra_rewards`, so that the
  random tiny model's groups have reward differences to learn from;
- rollouts are sampled prompt by prompt with a generator seeded by the prompt
  and the step, so a prompt gets the same completions whichever process draws
  it, whatever else is in its batch, and whether the run was resumed;
- after training, each rank saves its policy weights to `OUT/weights-rank{R}.pt`.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch


def seeded_per_prompt_sampling() -> None:
    import prlm.training.rollout as rollout

    original_sample, original_call = rollout.sample_shared_prefix, rollout.SharedPrefixRollout.__call__
    step = {"now": 0}

    def call(self, prompts, trainer):
        step["now"] = trainer.state.global_step  # a resumed run draws what an uninterrupted one would
        return original_call(self, prompts, trainer)

    def per_prompt(model, tokenizer, prompts, counts, max_new_tokens, **kwargs):
        merged = ([], [], [])
        for prompt, count in zip(prompts, counts):
            digest = hashlib.sha256(f"{step['now']}:{prompt}".encode()).hexdigest()
            generator = torch.Generator(device=model.device).manual_seed(int(digest[:12], 16))
            parts = original_sample(model, tokenizer, [prompt], [count], max_new_tokens,
                                    **{**kwargs, "generator": generator})
            for into, part in zip(merged, parts):
                into.extend(part)
        return merged

    rollout.SharedPrefixRollout.__call__ = call
    rollout.sample_shared_prefix = per_prompt


def record_weights_per_rank(out: str) -> None:
    from trl import GRPOTrainer

    original = GRPOTrainer.train

    def train(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        weights = {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
        torch.save(weights, os.path.join(out, f"weights-rank{self.accelerator.process_index}.pt"))
        return result

    GRPOTrainer.train = train


def letter_share(completions, **kwargs) -> list[float]:
    """A reward that varies within a group even for a random tiny model (the real
    rewards are all zero for its garbage), so the step has a gradient to compare."""
    return [sum(ch.isalpha() for ch in text) / max(len(text), 1) for text in completions]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompts-per-step", type=int, required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeded_per_prompt_sampling()
    record_weights_per_rank(args.out)

    from prlm.training.config import TrainConfig
    from prlm.training.grpo import train_grpo

    train_grpo(TrainConfig(task="synthetic", data=args.data, model=args.model, out=args.out, limit=8,
                           prompts_per_step=args.prompts_per_step, num_generations=2, max_completion_length=8,
                           max_steps=args.max_steps, save_steps=1, learning_rate=1e-3, temperature=1.0,
                           w_pers=0.0, loss_type="grpo", report_to="none", resume=args.resume, seed=0),
               extra_rewards=[(letter_share, 1.0)])


if __name__ == "__main__":
    main()
