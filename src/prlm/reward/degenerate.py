"""Degenerate answers: the checks every reward that scores an answer applies before scoring it.

An answer is degenerate when it is empty, holds no letter or digit, when the
`<answer>` section it came from still holds `<think>`/`</think>`, or when it
parrots the prompt's template instead of answering: it equals a whole
instruction of the prompts (`prompts.instruction` for every task and method),
equals or contains one of its template phrases (a sentence or line of three
words or more, e.g. "Reply with the subject line only." or the format example
"The user ... The text is about ..."), or copies six words or more of an
instruction in a row, or holds the placeholder of the authors' answer format
(`prompts.AUTHORS_FORMATS`: "generated title", "generated tweet"; their
LaMP-4 reward checks the same). Ordinary words of the instructions ("title",
"text", "user", "then", "the subject line") are not parroting: real outputs
use them. An answer that talks about the task instead of answering it
(opening "The user ...", "The commit ...", "This commit message ...": what
GRPO without a warm-up learnt once the template itself was refused) is
degenerate too; no gold output of the three shared commit sets (3,101 of
them) opens that way.

The personalization reward gives a degenerate answer its penalty instead of a
score; the format reward, with `reject_degenerate`, pays nothing for one
(GRPO from the base policy collapsed onto the template when only the
personalization term checked it: docs/results.md, prlm-rl-only).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from prlm.answers import REASONING_METHOD, THINK_PREFILL, assistant_text, first_answer_section, parse_completion


@lru_cache(maxsize=1)
def _instruction_texts() -> tuple[str, ...]:
    """Every instruction a prompt of this project ends with, normalized."""
    from prlm.data.tasks import TASKS
    from prlm.prompts import PROMPT_METHODS, instruction

    texts = {_normalize(instruction(task, method)) for task in TASKS.values() for method in PROMPT_METHODS}
    return tuple(sorted(texts))


MIN_PHRASE_WORDS = 3  # a template phrase: a sentence or line of an instruction with at least this many words
MIN_COPIED_WORDS = 6  # this many words of an instruction in a row is a copy, not a coincidence


@lru_cache(maxsize=1)
def _template_phrases() -> tuple[str, ...]:
    """The sentences and lines of the instructions (tags removed) long enough to be a clear template phrase."""
    phrases = set()
    for text in _instruction_texts():
        for part in re.split(r"(?<=[.:!?])\s+|\n|</?\w+>", text):
            words = _words(part)
            if len(words) >= MIN_PHRASE_WORDS:
                phrases.add(" ".join(words))
    return tuple(sorted(phrases))


@lru_cache(maxsize=1)
def _placeholders() -> tuple[str, ...]:
    from prlm.prompts import AUTHORS_FORMATS

    return tuple(sorted({fmt.placeholder for fmt in AUTHORS_FORMATS.values()}))


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _words(text: str) -> list[str]:
    """Lower-case words and '...' ellipses, punctuation and tags dropped (so 'only.' matches 'only')."""
    return re.findall(r"\.\.\.|[^\W_]+(?:['-][^\W_]+)*", re.sub(r"</?\w+>", " ", text.lower()))


def parrots_instructions(answer: str) -> bool:
    """Whether an answer copies the prompt's instructions rather than answering (see the module docstring)."""
    words = _words(answer)
    if not words:
        return False
    joined = f" {' '.join(words)} "
    if any(" ".join(_words(text)) == joined.strip() for text in _instruction_texts()):
        return True
    if any(f" {phrase} " in joined for phrase in _template_phrases()):
        return True
    if len(words) >= MIN_COPIED_WORDS:
        return any(joined in f" {' '.join(_words(text))} " for text in _instruction_texts())
    return False


# Openings of an answer that describes the task or the user rather than being the output (lower-case words).
TASK_TALK_OPENINGS = ("the user", "the commit", "this commit", "the new text", "the text is about")


def talks_about_task(answer: str) -> bool:
    """Whether an answer opens by talking about the task ("The user ...", "This commit message ...")."""
    opening = " ".join(_words(answer)[:4])
    return any(opening == phrase or opening.startswith(phrase + " ") or opening.startswith(phrase + "'")
               for phrase in TASK_TALK_OPENINGS)


def degenerate_reason(answer: str, raw_answer_section: str = "") -> str:
    """Why an answer gets the penalty ('' when it is scored)."""
    if not answer.strip():
        return "empty"
    if not re.search(r"[^\W_]", answer):
        return "no letters or digits"
    section = raw_answer_section.lower()
    if "<think" in section or "</think" in section:
        return "<think> inside the answer"
    if parrots_instructions(answer):
        return "parrots the prompt's instructions"
    if any(placeholder in answer.lower() for placeholder in _placeholders()):
        return "repeats the prompt's placeholder"
    if talks_about_task(answer):
        return "talks about the task instead of answering"
    return ""


def completion_answer(completion: Any, method: str = REASONING_METHOD, task=None,
                      prefill: str = THINK_PREFILL) -> tuple[str, str]:
    """(answer, degenerate reason) of one completion (TRL's string or message list): the answer evaluation
    reads (`answers.parse_completion`) and why it is degenerate ('' when it is not)."""
    text = assistant_text(completion)
    answer = parse_completion(text, method, task, prefill=prefill).answer
    # The raw section the answer came from: tags left in it are cleaned out of the answer.
    section = (first_answer_section(prefill + text) or "") if method == REASONING_METHOD else ""
    return answer, degenerate_reason(answer, section)
