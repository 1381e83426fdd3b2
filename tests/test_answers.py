"""The answer format (prlm.answers): extraction, the format check, forcing, completions as TRL passes them."""

import pytest

from prlm import PrlmError
from prlm.answers import (
    ANSWER_FORCING,
    assistant_text,
    first_answer_section,
    forcing_head,
    has_reasoning_format,
    last_message_text,
    parse_completion,
    prefill_for,
    reply_after_prefill,
    stop_strings,
)
from prlm.data import get_task

TASK = get_task("LaMP-4")


# (completion after the pre-fill, expected reasoning, expected answer)
REASONING_CASES = [
    ("The user is terse.</think>\n<answer>Fix the parser</answer>", "The user is terse.", "Fix the parser"),
    ("r</think><answer>  \"Fix the parser\"  </answer> trailing", "r", "Fix the parser"),
    ("r</think><answer>Fix the parser", "r", "Fix the parser"),  # unclosed answer
    ("r</think>\nFix the parser\nmore text", "r", ""),  # no answer tag: not an answer (issue 12)
    ("r</think><answer></answer>", "r", ""),  # empty answer
    ("r</think><answer>Headline: Fix it</answer>", "r", "Fix it"),  # label stripped
    ("reasoning that never closes", "reasoning that never closes", ""),
    ("r <answer>Fix it</answer>", "r", "Fix it"),  # think unclosed, answer present
    ("", "", ""),
    ("<think>nested</think><answer>A</answer><answer>B</answer>", "", "A"),
]


@pytest.mark.parametrize("completion,reasoning,answer", REASONING_CASES)
def test_reasoning_extraction_table(completion, reasoning, answer):
    parsed = parse_completion(completion, "prlm", TASK, prefill="<think>")
    assert parsed.answer == answer
    if reasoning:
        assert parsed.reasoning == reasoning


def test_reasoning_without_any_tags_uses_last_line():
    assert parse_completion("thinking...\nFinal Title", "prlm", TASK).answer == "Final Title"


PLAIN_CASES = [
    ("Fix the parser", "Fix the parser"),
    ("\n\n  Fix the parser  \nExplanation: ...", "Fix the parser"),
    ('"Fix the parser"', "Fix the parser"),
    ("Headline: Fix the parser", "Fix the parser"),
    ("<answer>Fix the parser</answer>", "Fix the parser"),
    ("Your subject line is:\n\nFix the parser\n", "Fix the parser"),  # an introducing line is skipped
    ("Subject line:\nFix the parser", "Fix the parser"),
    ("Note: the parser was fixed", "Note: the parser was fixed"),  # a colon inside the answer stays
    ("", ""),
]


@pytest.mark.parametrize("completion,answer", PLAIN_CASES)
def test_plain_extraction_table(completion, answer):
    assert parse_completion(completion, "rag", TASK).answer == answer


def test_format_without_prefill_requires_opening_tag():
    assert has_reasoning_format("<think>a</think><answer>b</answer>", prefill="")
    assert not has_reasoning_format("a</think><answer>b</answer>", prefill="")


def test_the_method_decides_prefill_and_stop():
    assert prefill_for("prlm") == "<think>" and stop_strings("prlm") == ["</answer>"]
    assert prefill_for("rag") == "" and stop_strings("no-profile") == []


def test_a_well_formed_reply_passes_the_check_and_parses():
    reply = reply_after_prefill(" the user is terse", "Fix it")
    assert has_reasoning_format(reply)
    assert parse_completion(reply, "prlm", TASK, prefill="<think>").answer == "Fix it"


def test_first_answer_section():
    assert first_answer_section("r</think><answer>A</answer><answer>B</answer>") == "A"
    assert first_answer_section("r</think><answer>A unclosed") == "A unclosed"
    assert first_answer_section("r</think>no tag") is None


@pytest.mark.parametrize("completion,head", [
    (" ran out of tokens", " ran out of tokens" + ANSWER_FORCING),
    (" closed</think>", " closed</think>\n<answer>"),
    (" r</think>\n<answer></answer>", " r</think>\n<answer>"),  # an empty section is replaced, not followed
])
def test_forcing_head(completion, head):
    assert forcing_head(completion) == head


def test_completion_text_forms():
    messages = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "b"}]
    # The accuracy and format rewards read the last message; the personalization reward every assistant message.
    assert last_message_text("abc") == "abc" and last_message_text(messages) == "b"
    assert assistant_text("abc") == "abc" and assistant_text(messages) == "ab"
    assert assistant_text({"content": "c"}) == "c"
    with pytest.raises(TypeError):
        last_message_text(3)
    with pytest.raises(PrlmError):
        assistant_text(3)


def test_answer_only_prefill_reads_and_checks_the_answer_alone():
    from prlm.answers import ANSWER_ONLY_PREFILL, THINK_PREFILL, has_reasoning_format, prefill_for

    assert prefill_for("prlm", "prlm-answer-only") == ANSWER_ONLY_PREFILL == "<think></think>\n<answer>"
    assert prefill_for("prlm") == THINK_PREFILL and prefill_for("rag", "prlm-answer-only") == ""
    assert has_reasoning_format("fix the parser</answer>", ANSWER_ONLY_PREFILL)
    assert not has_reasoning_format("</answer>", ANSWER_ONLY_PREFILL)  # no answer
    assert not has_reasoning_format("fix the parser", ANSWER_ONLY_PREFILL)  # never closed
    # the model itself leaving its reasoning empty is still a fault under the usual pre-fill
    assert not has_reasoning_format("</think>\n<answer>fix the parser</answer>", THINK_PREFILL)
