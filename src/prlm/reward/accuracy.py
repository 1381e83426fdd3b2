"""Accuracy reward: ROUGE of the extracted answer against the user's real output."""

from __future__ import annotations

from collections.abc import Sequence

from prlm import PrlmError
from prlm.answers import REASONING_METHOD, THINK_PREFILL, last_message_text, parse_completion
from prlm.evaluation import ROUGE_KEYS, check_rouge_choice, rouge


class AccuracyReward:
    """Sum of ROUGE F1 scores (default ROUGE-1 + ROUGE-2 + ROUGE-L, as the
    authors' code) of the answer extracted from each completion against the
    `gold` column; `normalize` divides by the number of metrics (range 0..1).
    `rouge`: 'rouge-score' (LaMP's tokens, as evaluation) or 'authors' (the PrLM
    release's jieba tokens and rouge_chinese, `evaluation.authors_rouge`)."""

    __name__ = "accuracy"  # TRL logs each term under its function's __name__

    def __init__(self, metrics: Sequence[str] = ROUGE_KEYS, method: str = REASONING_METHOD,
                 prefill: str = THINK_PREFILL, normalize: bool = False, rouge: str = "rouge-score"):
        unknown = [m for m in metrics if m not in ROUGE_KEYS]
        if unknown or not metrics:
            raise PrlmError(f"accuracy metrics must be among {', '.join(ROUGE_KEYS)}, got {list(metrics)}")
        check_rouge_choice("rouge", rouge, ("rouge-score", "authors"))
        self.metrics, self.method, self.prefill, self.normalize = tuple(metrics), method, prefill, normalize
        self.rouge = rouge

    def __call__(self, prompts, completions, gold, **kwargs) -> list[float]:
        scale = 1.0 / len(self.metrics) if self.normalize else 1.0
        rewards = []
        for completion, reference in zip(completions, gold):
            answer = parse_completion(last_message_text(completion), self.method, prefill=self.prefill).answer
            if not answer:  # no answer section (or an empty one): nothing to score, the lowest reward
                rewards.append(0.0)
                continue
            scores = rouge(answer, reference, self.rouge)
            rewards.append(scale * sum(scores[m] for m in self.metrics))
        return rewards
