"""Format reward: 1 when the completion reasons in <think> and answers in <answer> (`prlm.answers`'s check)."""

from __future__ import annotations

from prlm.answers import REASONING_METHOD, THINK_PREFILL, has_reasoning_format, last_message_text


class FormatReward:
    """1.0 for a completion in the reasoning format, else 0.0 (TRL's reward signature).

    The completion TRL passes starts after the prompt, and so after the `<think>` pre-fill the prompt ends
    with: the check is told the pre-fill so that it reads the reply as the model wrote it. The recipes weight
    it 0.1 against accuracy's 1.0, as the authors' code does.

    With `reject_degenerate`, a completion in format whose answer is degenerate (`reward.degenerate`: empty,
    no letter or digit, `<think>` inside it, or the prompt's template parroted) also gets 0.0. Off by default:
    it changes the reward every recorded recipe was trained with. It is the check GRPO from the base policy
    lacked when it learned the tags and filled them with the template (prlm-rl-only in docs/results.md).
    """

    __name__ = "format"  # TRL names each term's logged mean after the function's __name__

    def __init__(self, prefill: str = THINK_PREFILL, reject_degenerate: bool = False):
        self.prefill = prefill
        self.reject_degenerate = reject_degenerate

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [1.0 if self._in_format(c) else 0.0 for c in completions]

    def _in_format(self, completion) -> bool:
        if not has_reasoning_format(last_message_text(completion), self.prefill):
            return False
        if not self.reject_degenerate:
            return True
        from prlm.reward.degenerate import completion_answer

        return not completion_answer(completion, REASONING_METHOD, prefill=self.prefill)[1]
