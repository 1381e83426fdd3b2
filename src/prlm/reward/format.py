"""Format reward: 1 when the completion reasons in <think> and answers in <answer> (`prlm.answers`'s check)."""

from __future__ import annotations

from prlm.answers import THINK_PREFILL, has_reasoning_format, last_message_text


class FormatReward:
    """1.0 for a completion in the reasoning format, else 0.0 (TRL's reward signature).

    The completion TRL passes starts after the prompt, and so after the `<think>` pre-fill the prompt ends
    with: the check is told the pre-fill so that it reads the reply as the model wrote it. The recipes weight
    it 0.1 against accuracy's 1.0, as the authors' code does.
    """

    __name__ = "format"  # TRL names each term's logged mean after the function's __name__

    def __init__(self, prefill: str = THINK_PREFILL):
        self.prefill = prefill

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [1.0 if has_reasoning_format(last_message_text(c), self.prefill) else 0.0 for c in completions]
