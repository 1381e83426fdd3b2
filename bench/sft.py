"""sft: one optimisation step of the supervised baseline, the whole batch in one pass against micro-batches.

The step of `configs/sft-commit-subject-devsel.yaml` (8 examples of git-commit-subject's train split, rag
prompts of 512 tokens, 48 answer tokens, the embedded SmolLM2-135M), run by `prlm.training.sft.sft_trainer`
as `prlm sft` runs it, with `micro_batch` 0 (one pass, as the recorded runs) and then smaller: gradient
accumulation makes the same update (tests/test_sft.py), so only the time differs. A forward pass holds the
full-vocabulary logits (49,152 floats a token) of every position of its examples; fewer examples a pass hold
fewer of them. The first step of each trainer is left out (allocation, first-call overhead); the median of
the rest is reported.
"""

from __future__ import annotations

import tempfile
import time

from bench.common import DEFAULT_DATA, add_size_options, choose_sizes, comparison, measurement

FULL = {"sft_batch": 8, "sft_micro_batch": 2, "sft_policy": "smollm2-135m", "sft_max_prompt_tokens": 512}
QUICK = {**FULL, "sft_batch": 2, "sft_micro_batch": 1, "sft_max_prompt_tokens": 128}
HELP = {"sft_batch": "examples per optimisation step", "sft_micro_batch": "examples per forward pass of the "
        "candidate (must divide sft_batch)", "sft_policy": "policy fine-tuned",
        "sft_max_prompt_tokens": "token limit of a prompt"}


def add_arguments(parser) -> None:
    add_size_options(parser, FULL, QUICK, HELP)


def step_times(data_dir, sizes: dict, micro_batch: int, steps: int) -> list[float]:
    """Seconds of each optimisation step after the first, `steps` of them, from a fresh policy."""
    from transformers import TrainerCallback

    from prlm.models import load_policy
    from prlm.training.sft import SFTConfig, sft_rows, sft_trainer

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.started = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.started)

    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(task="commit-subject", data=str(data_dir), out=out, model=sizes["sft_policy"],
                        max_prompt_tokens=sizes["sft_max_prompt_tokens"], max_steps=steps + 1,
                        batch_size=sizes["sft_batch"], micro_batch=micro_batch, limit=(steps + 1) * sizes["sft_batch"])
        model, tokenizer = load_policy(cfg.model, device="cpu")
        clock = StepClock()
        sft_trainer(cfg, model, tokenizer, sft_rows(cfg, tokenizer), [clock]).train()
    return clock.times[1:]


def run(quick: bool, args=None) -> dict:
    sizes = choose_sizes(args, FULL, QUICK, quick)
    steps = getattr(args, "repeats", None) or (1 if quick else 3)
    sizes["steps_timed"] = steps
    data = getattr(args, "data", None) or DEFAULT_DATA
    batch = sizes["sft_batch"]
    one_pass = step_times(data, sizes, 0, steps)
    micro = step_times(data, sizes, sizes["sft_micro_batch"], steps)
    return {"title": "sft step", "sizes": sizes, "comparisons": [comparison(
        f"sft optimisation step ({batch} examples)",
        measurement(f"one pass of {batch} (micro_batch 0, the recorded runs)", one_pass, batch, "examples/s"),
        measurement(f"micro-batches of {sizes['sft_micro_batch']}, gradient accumulation", micro, batch,
                    "examples/s"))]}
