"""Format reward: 1 when the completion reasons in <think> and answers in <answer> (`prlm.answers`'s check)."""

from __future__ import annotations

from prlm.answers import THINK_PREFILL, has_reasoning_format, last_message_text


class FormatReward:
    __name__ = "format"

    def __init__(self, prefill: str = THINK_PREFILL):
        self.prefill = prefill

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [1.0 if has_reasoning_format(last_message_text(c), self.prefill) else 0.0 for c in completions]
