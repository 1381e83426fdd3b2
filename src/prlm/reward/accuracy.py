"""Accuracy reward: ROUGE of the extracted answer against the user's real output."""

from __future__ import annotations

from typing import Sequence

from prlm import PrlmError
from prlm.evaluation import ROUGE_KEYS, rouge
from prlm.prompts import THINK_PREFILL, parse_completion


def completion_text(completion) -> str:
    """TRL passes plain strings, or chat messages for conversational prompts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


class AccuracyReward:
    """Sum of ROUGE F1 scores (default ROUGE-1 + ROUGE-2 + ROUGE-L, as the
    authors' code) of the answer extracted from each completion against the
    `gold` column; `normalize` divides by the number of metrics (range 0..1)."""

    __name__ = "accuracy"

    def __init__(self, metrics: Sequence[str] = ROUGE_KEYS, style: str = "prlm", prefill: str = THINK_PREFILL,
                 normalize: bool = False):
        unknown = [m for m in metrics if m not in ROUGE_KEYS]
        if unknown or not metrics:
            raise PrlmError(f"accuracy metrics must be among {', '.join(ROUGE_KEYS)}, got {list(metrics)}")
        self.metrics, self.style, self.prefill, self.normalize = tuple(metrics), style, prefill, normalize

    def __call__(self, prompts, completions, gold, **kwargs) -> list[float]:
        scale = 1.0 / len(self.metrics) if self.normalize else 1.0
        rewards = []
        for completion, reference in zip(completions, gold):
            answer = parse_completion(completion_text(completion), self.style, prefill=self.prefill).answer
            if not answer:
                rewards.append(0.0)
                continue
            scores = rouge(answer, reference)
            rewards.append(scale * sum(scores[m] for m in self.metrics))
        return rewards
