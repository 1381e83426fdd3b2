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
