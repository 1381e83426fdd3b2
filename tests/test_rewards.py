import pytest

from prlm import PrlmError
from prlm.reward.accuracy import AccuracyReward
from prlm.reward.format import FormatReward

GOLD = "fix the parser crash"

# (completion after the "<think>" pre-fill, format reward, accuracy reward with R1+R2+RL)
CASES = [
    (" the user is terse</think>\n<answer>fix the parser crash</answer>", 1.0, 3.0),
    ("<think> repeated pre-fill is fine</think><answer>fix the parser crash</answer>", 1.0, 3.0),
    (" r</think><answer>fix the parser</answer>", 1.0, None),  # partial credit
    (" r</think><answer></answer>", 0.0, 0.0),  # empty answer
    (" r</think>fix the parser crash", 0.0, 0.0),  # no answer tag: nothing to score (the authors' reward)
    (" never closed <answer>fix the parser crash</answer>", 0.0, 3.0),
    (" r</think><answer>fix the parser crash</answer> and more", 0.0, 3.0),  # trailing text
    ("", 0.0, 0.0),
    (" </think><answer>fix the parser crash</answer>", 0.0, 3.0),  # empty reasoning
]


@pytest.mark.parametrize("completion,fmt,acc", CASES)
def test_reward_table(completion, fmt, acc):
    assert FormatReward()([""], [completion]) == [fmt]
    got = AccuracyReward()([""], [completion], gold=[GOLD])[0]
    if acc is None:
        assert 0 < got < 3
    else:
        assert got == pytest.approx(acc)


def test_chat_message_completions_are_read():
    completion = [{"role": "assistant", "content": " r</think><answer>fix the parser crash</answer>"}]
    acc = AccuracyReward(normalize=True)([""], [completion], gold=[GOLD])[0]
    fmt = FormatReward()([""], [completion])[0]
    assert acc == pytest.approx(1.0) and fmt == 1.0


def test_accuracy_metric_choice():
    only_l = AccuracyReward(metrics=["rougeL"])([""], [" r</think><answer>fix the parser crash</answer>"], gold=[GOLD])
    assert only_l == [pytest.approx(1.0)]
    with pytest.raises(PrlmError, match="accuracy metrics"):
        AccuracyReward(metrics=["bleu"])


# (completion after the "<think>" pre-fill, format reward with reject_degenerate): the tags are right in all
PARROTED = " The user writes short subjects</think><answer>The user ... The text is about ...</answer>"
DEGENERATE_CASES = [
    (" terse user</think><answer>fix the parser crash</answer>", 1.0),
    (PARROTED, 0.0),  # the format example of the prompt, copied (what prlm-rl-only learned)
    (" r</think><answer>Reply with the subject line only.</answer>", 0.0),  # an instruction sentence
    (" r</think><answer>...</answer>", 0.0),  # no letter or digit
    (" r</think><answer>user text for the subject line</answer>", 1.0),  # ordinary instruction words
    (" r</think><answer>The user would write: fix it</answer>", 0.0),  # talks about the task (issue 23)
]


@pytest.mark.parametrize("completion,fmt", DEGENERATE_CASES)
def test_format_reward_can_reject_degenerate_answers(completion, fmt):
    assert FormatReward(reject_degenerate=True)([""], [completion]) == [fmt]


def test_format_reward_pays_for_the_tags_alone_by_default():
    """Off by default: the recorded recipes were trained with a format term that pays a parroted answer."""
    assert FormatReward()([""], [PARROTED]) == [1.0]
    assert FormatReward()([""], [" r</think><answer>...</answer>"]) == [1.0]
