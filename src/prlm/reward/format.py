"""Format reward: 1 when the completion reasons in <think> and answers in <answer> (`prlm.answers`'s check),
or, in the authors' variant, 1 when the reasoning is closed on a line of its own."""

from __future__ import annotations

from prlm import PrlmError
from prlm.answers import REASONING_METHOD, THINK_CLOSE, THINK_PREFILL, has_reasoning_format, last_message_text

FORMAT_REWARDS = ("prlm", "authors")
FORMAT_REWARD_HELP = ("Format reward: 'prlm' (<think>reasoning</think><answer>answer</answer> and nothing else, both "
                      "non-empty) or 'authors' (1 when '\\n</think>' appears anywhere in the completion, the PrLM "
                      "release's check; docs/paper-recipe.md).")


class FormatReward:
    """1.0 for a completion in the reasoning format, else 0.0 (TRL's reward signature).

    The completion TRL passes starts after the prompt, and so after the `<think>` pre-fill the prompt ends
    with: the check is told the pre-fill so that it reads the reply as the model wrote it. The recipes weight
    it 0.1 against accuracy's 1.0, as the authors' code does.

    With `reject_degenerate`, a completion in format whose answer is degenerate (`reward.degenerate`: empty,
    no letter or digit, `<think>` inside it, or the prompt's template parroted) also gets 0.0. Off by default:
    it changes the reward every recorded recipe was trained with. It is the check GRPO from the base policy
    lacked when it learned the tags and filled them with the template (prlm-rl-only in docs/results.md).

    `style` 'authors' is the PrLM release's check instead (Model_Train/src/open_r1/rewards.py,
    `law_format_reward`, the one its registry names `format`): the pattern `^.*?\n</think>.*` under DOTALL, that
    is, 1.0 whenever a line break followed by `</think>` appears anywhere in the completion, whatever follows
    (an answer or not). `reject_degenerate` applies on top of either.
    """

    __name__ = "format"  # TRL names each term's logged mean after the function's __name__

    def __init__(self, prefill: str = THINK_PREFILL, reject_degenerate: bool = False, style: str = "prlm"):
        if style not in FORMAT_REWARDS:
            raise PrlmError(f"format_reward='{style}' is not valid; use one of: {', '.join(FORMAT_REWARDS)}")
        self.prefill = prefill
        self.reject_degenerate = reject_degenerate
        self.style = style

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [1.0 if self._in_format(c) else 0.0 for c in completions]

    def _in_format(self, completion) -> bool:
        text = last_message_text(completion)
        if self.style == "authors":
            if f"\n{THINK_CLOSE}" not in text:
                return False
        elif not has_reasoning_format(text, self.prefill):
            return False
        if not self.reject_degenerate:
            return True
        from prlm.reward.degenerate import completion_answer

        return not completion_answer(completion, REASONING_METHOD, prefill=self.prefill)[1]
