"""The answer format, in one place: how a reply is written, stopped, forced, read and checked.

The `prlm` method's reply is ``<think>reasoning</think>\\n<answer>answer</answer>``;
the other methods (`no-profile`, `rag`) reply with the answer alone. Everything
that writes or reads that format lives here, so that the prompts, the rewards,
evaluation, training and the server cannot drift apart. As in nanochat's GSM8K
task, there is one extractor (`parse_completion`), used by evaluation and by
every reward, and one format check (`has_reasoning_format`).

The rules, and why:

- Pre-fill: a `prlm` reply is started for the model with ``<think>``
  (`THINK_PREFILL`), so that small models begin in the format. The pre-fill is
  part of the prompt, not of the completion; readers put it back in front.
  The answer-only wording (`ANSWER_ONLY_STYLE`, the ablation "does the
  reasoning earn its tokens?") pre-fills an empty reasoning and the opened
  answer (`ANSWER_ONLY_PREFILL`): the model writes the answer alone, read and
  checked by the same rules (its empty reasoning is the prompt's, not a fault).
- Stop string: generation stops at ``</answer>`` (`ANSWER_CLOSE`): nothing after
  the answer is read, so no token is spent on it. A backend may cut the stop
  string off, and a completion may end inside the answer at the token budget.
- The answer is what the first ``<answer>`` section holds, as in the authors'
  reward. An unclosed section still counts (because of the stop string above).
  Text after ``</think>`` without an answer tag is not an answer: the format
  was not followed, and the reward and evaluation read the same thing; the one
  exception is a keyed answer there (below), which says unambiguously what it
  is. Only a completion with no tag at all (a model that ignored the format) is
  read as plain text: its last line.
- Keyed answers: the authors' prompt (`prompts.PROMPT_STYLES`, `authors`) asks
  for the answer as ``{'title': '...'}`` (``{'tweet': '...'}`` on LaMP-7)
  inside ``<answer>``; an answer in that form is read as the value it holds
  (`keyed_answer`), single or double quotes alike.
- Answer forcing (budget forcing): a completion that gave no answer gets its
  reasoning closed and the answer opened (`ANSWER_FORCING`, ``</think>\\n<answer>``)
  and the model writes the answer. An empty ``<answer></answer>`` is cut away
  first, since only the first section is read.
- Format check: ``<think>reasoning</think><answer>answer</answer>`` and nothing
  else, both parts non-empty and without nested opening tags (the format
  reward; also the format rate of evaluation).
- Cleaning: an answer is one line, without tags, surrounding quotes or a
  leading label such as ``Headline:``; for the methods without reasoning, the
  whole reply is cleaned the same way.

This module is low in the import order: it imports nothing of prlm but `PrlmError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prlm import PrlmError

REASONING_METHOD = "prlm"
"""The prompt method whose replies use the <think>/<answer> format."""
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_PREFILL = THINK_OPEN
"""What the prompt writes of a `prlm` reply before the model continues."""
ANSWER_FORCING = f"{THINK_CLOSE}\n{ANSWER_OPEN}"
"""Appended to a completion without an answer to make the model write one."""


ANSWER_ONLY_STYLE = "prlm-answer-only"
"""The reasoning prompt's wording whose reply is pre-filled up to the answer (prompts.PROMPT_STYLES)."""
ANSWER_ONLY_PREFILL = f"{THINK_OPEN}{ANSWER_FORCING}"
"""`<think></think>\n<answer>`: the reasoning left empty by the prompt, the answer opened."""


def prefill_for(method: str, style: str = "prlm") -> str:
    """The start of the reply written for the model: `<think>` for `prlm` (up to `<answer>` in the
    answer-only wording), nothing otherwise."""
    if method != REASONING_METHOD:
        return ""
    return ANSWER_ONLY_PREFILL if style == ANSWER_ONLY_STYLE else THINK_PREFILL


def stop_strings(method: str) -> list[str]:
    """Where generation stops: after the answer for `prlm` (nothing later is read); at EOS otherwise."""
    return [ANSWER_CLOSE] if method == REASONING_METHOD else []


def reply_after_prefill(reasoning: str, answer: str) -> str:
    """A well-formed `prlm` reply once the pre-fill opened `<think>`: the reasoning, closed, then the answer."""
    return f"{reasoning}{ANSWER_FORCING}{answer}{ANSWER_CLOSE}"


# --- reading -------------------------------------------------------------------

_TAG = re.compile(r"</?\s*(think|answer)\s*>", re.IGNORECASE)
_QUOTES = "\"'`“”‘’*"
_LABELS = ("answer", "headline", "title", "subject line", "subject", "tweet", "paraphrase")


_KEYED = re.compile(r"""\{\s*(['"])([A-Za-z][A-Za-z ]*)\1\s*:\s*(['"])(?P<value>.*?)\3\s*\}""", re.DOTALL)


def keyed_answer(text: str) -> str | None:
    """The value of the first ``{'key': 'value'}`` in `text` (the authors' answer format), None when there is none.
    The value ends at the quote that closes the braces, so an apostrophe inside it ("Obama's plan") is kept."""
    match = _KEYED.search(text)
    return match["value"] if match else None


def clean_answer(text: str, task=None) -> str:
    """One line, without tags, surrounding quotes or a leading label like 'Headline:'; a keyed answer
    (``{'title': '...'}``) is its value.

    `task` (a `prlm.data.tasks.Task`, optional): its output name is one more label to strip."""
    text = _TAG.sub(" ", text).strip()
    value = keyed_answer(text)
    if value is not None:
        text = value
    labels = ([task.output_name] if task is not None else []) + list(_LABELS)
    label_re = re.compile(r"^(?:" + "|".join(re.escape(x) for x in labels) + r")\s*[:\-]\s*", re.IGNORECASE)
    line = ""
    for candidate in (ln.strip() for ln in text.splitlines() if ln.strip()):
        line = label_re.sub("", candidate).strip()
        # "Here is the subject line:" introduces the answer on the next line.
        if line and not (line.endswith(":") and len(line.split()) <= 8):
            break
        line = ""
    if len(line) >= 2 and line[0] in _QUOTES and line[-1] in _QUOTES:
        line = line.strip(_QUOTES).strip()
    return " ".join(line.split())


def first_answer_start(completion: str) -> int:
    """Index of the first `<answer>` tag in a completion, -1 when there is none."""
    return completion.lower().find(ANSWER_OPEN)


def first_answer_section(text: str) -> str | None:
    """The raw text of the first `<answer>` section (to `</answer>` or the end: an unclosed one counts,
    generation stops at `</answer>`); None when there is no `<answer>` tag."""
    start = first_answer_start(text)
    if start == -1:
        return None
    rest = text[start + len(ANSWER_OPEN):]
    end = rest.lower().find(ANSWER_CLOSE)
    return rest if end == -1 else rest[:end]


@dataclass
class Parsed:
    reasoning: str
    answer: str


def parse_completion(completion: str, method: str, task=None, prefill: str = "") -> Parsed:
    """Split a completion into reasoning and answer, tolerating malformed output (rules: module docstring).

    `prefill` is what the prompt already wrote of the reply (e.g. `<think>`);
    it is put back in front so that tags it opened are seen.
    """
    full = prefill + completion
    if method != REASONING_METHOD:
        return Parsed(reasoning="", answer=clean_answer(full, task))
    lower = full.lower()
    think_open, think_close = lower.find(THINK_OPEN), lower.find(THINK_CLOSE)
    answer_open = lower.find(ANSWER_OPEN)
    reasoning = ""
    if think_open != -1:
        end = think_close if think_close != -1 else (answer_open if answer_open != -1 else len(full))
        reasoning = full[think_open + len(THINK_OPEN): end].strip()
    section = first_answer_section(full)
    answer = ""
    if section is not None:
        answer = clean_answer(section, task)
    elif think_close != -1 and keyed_answer(full[think_close:]) is not None:
        # No answer tag, but the authors' keyed answer after the reasoning: unambiguous, read it.
        answer = clean_answer(keyed_answer(full[think_close:]), task)
    elif think_open == -1 and think_close == -1:
        # No tag at all: a model that ignored the format entirely; its last line is its answer.
        lines = [ln for ln in _TAG.sub(" ", full).splitlines() if ln.strip()]
        answer = clean_answer(lines[-1], task) if lines else ""
    return Parsed(reasoning=reasoning, answer=answer)


def forcing_head(completion: str) -> str:
    """The completion up to where its answer must start, with the answer tag opened (answer forcing).

    An answer section that came out empty (`<answer></answer>`) is cut away first: the parser
    reads the first `<answer>`, so a second one appended after it would never be read."""
    start = first_answer_start(completion)
    if start != -1:
        completion = completion[:start].rstrip()
    return completion + ("\n" + ANSWER_OPEN if THINK_CLOSE in completion.lower() else ANSWER_FORCING)


# --- the format check ----------------------------------------------------------

_STRUCTURE = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.+?)</answer>\s*$",
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
    # An empty reasoning is a fault of the model's, unless the pre-fill closed it (the answer-only wording).
    reasoned = match and (match["think"].strip() or THINK_CLOSE in prefill.lower())
    return bool(reasoned and match["answer"].strip()
                and THINK_OPEN not in match["think"].lower() and ANSWER_OPEN not in match["answer"].lower())


# --- completions as TRL passes them ----------------------------------------------

def last_message_text(completion) -> str:
    """A string as it is; chat messages: the content of the last message only.

    The accuracy and format rewards read this: with a conversational prompt, TRL's
    completion is the list of the messages generated, the reply being the last one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def assistant_text(completion: Any) -> str:
    """A string as it is; one message (a dict): its content; a list of messages: the contents of all
    assistant messages joined (a message without a role counts as the assistant's; non-text content is
    skipped).

    The personalization reward reads this: the reward model scores everything the policy wrote."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        parts = [m.get("content", "") for m in completion
                 if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return "".join(p if isinstance(p, str) else "" for p in parts)
    raise PrlmError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")
