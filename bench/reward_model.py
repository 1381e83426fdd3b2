"""Reward model: (input, answer) pairs scored per second, batched against one pair per forward.

The model is the embedded MiniLM with a fresh scalar head (untrained: the
throughput does not depend on the weights), wrapped in prlm's `RewardModel`
exactly as a trained checkpoint is. Pairs: dev inputs of git-commit-subject
with their gold subject and with the user's latest past subject.
"""

from __future__ import annotations

import numpy as np

from bench.common import (
    DEFAULT_DATA,
    add_size_options,
    choose_sizes,
    comparison,
    load_examples,
    measurement,
    time_runs,
)

FULL = {"pairs": 64, "rm_batch_size": 32, "rm_max_length": 256}
QUICK = {"pairs": 8, "rm_batch_size": 4, "rm_max_length": 128}
HELP = {"pairs": "(input, answer) pairs scored", "rm_batch_size": "pairs per batch of the batched scorer",
        "rm_max_length": "token limit of one pair"}


def add_arguments(parser) -> None:
    add_size_options(parser, FULL, QUICK, HELP)


def untrained_reward_model(max_length: int):
    """prlm's RewardModel over MiniLM with a new, seeded, scalar head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from prlm.models import resolve_encoder_path
    from prlm.reward.model import RewardModel

    path = resolve_encoder_path("minilm")
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    config = {"backbone": "minilm", "max_length": max_length, "context_entries": 0,
              "model_type": model.config.model_type}
    return RewardModel(model, AutoTokenizer.from_pretrained(path), config, device="cpu")


def benchmark_pairs(data_dir, n_pairs: int) -> tuple[list[str], list[str]]:
    _, examples = load_examples(data_dir, ["dev"])
    inputs, answers = [], []
    for ex in examples:
        latest = max(ex.profile, key=lambda e: e["date"])["title"]
        for answer in (ex.gold or "", latest):
            inputs.append(ex.input)
            answers.append(answer)
    return inputs[:n_pairs], answers[:n_pairs]


def run(quick: bool, args=None) -> dict:
    sizes = choose_sizes(args, FULL, QUICK, quick)
    repeats = getattr(args, "repeats", None) or (1 if quick else 3)
    sizes["repeats"] = repeats
    rm = untrained_reward_model(sizes["rm_max_length"])
    inputs, answers = benchmark_pairs(getattr(args, "data", None) or DEFAULT_DATA, sizes["pairs"])
    n = len(inputs)
    base_times, base_scores = time_runs(lambda: rm.score(inputs, answers, batch_size=1), repeats)
    cand_times, cand_scores = time_runs(lambda: rm.score(inputs, answers, batch_size=sizes["rm_batch_size"]), repeats)
    same = int(np.sum(np.isclose(base_scores, cand_scores, rtol=1e-4, atol=1e-5)))
    return {"title": "Reward model", "sizes": {**sizes, "pairs": n}, "comparisons": [comparison(
        "reward model scoring (MiniLM cross-encoder)",
        measurement("one pair per forward", base_times, n, "pairs/s"),
        measurement(f"prlm RewardModel.score, batches of {sizes['rm_batch_size']} (longest first)", cand_times, n,
                    "pairs/s"),
        checks={"pairs": n, "same_scores_within_1e-4": same,
                "max_abs_difference": float(np.max(np.abs(base_scores - cand_scores))) if n else 0.0})]}
