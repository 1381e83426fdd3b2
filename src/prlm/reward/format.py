"""Format reward: 1 when the completion reasons in <think> and answers in <answer>."""

from __future__ import annotations

import re

from prlm.prompts import THINK_PREFILL
from prlm.reward.accuracy import completion_text

_STRUCTURE = re.compile(r"^\s*<think>(?P<think>.+?)</think>\s*<answer>(?P<answer>.+?)</answer>\s*$",
                        re.DOTALL | re.IGNORECASE)


def has_reasoning_format(completion: str, prefill: str = THINK_PREFILL) -> bool:
    """`<think>reasoning</think><answer>answer</answer>`, nothing else, both non-empty.

    A prompt (or chat template) that already opened `<think>` is tolerated: the
    pre-fill is put back in front unless the completion repeats it.
    """
    text = completion.lstrip()
    if prefill and not text.lower().startswith(prefill.strip().lower()):
        text = prefill + text
    match = _STRUCTURE.match(text)
    return bool(match and match["think"].strip() and match["answer"].strip()
                and "<think>" not in match["think"].lower() and "<answer>" not in match["answer"].lower())


class FormatReward:
    __name__ = "format"

    def __init__(self, prefill: str = THINK_PREFILL):
        self.prefill = prefill

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [1.0 if has_reasoning_format(completion_text(c), self.prefill) else 0.0 for c in completions]
