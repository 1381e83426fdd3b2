"""Prompts for the three methods, the profile token budget, answer extraction.

Styles:
- `no-profile`: the input alone.
- `rag`: LaMP's plain RAG prompt, the retrieved entries then the input.
- `prlm`: the reasoning prompt; the model reasons about the entries inside
  `<think>` and answers inside `<answer>`. The reply is pre-filled with
  `<think>` so that small models start in the format.

Entries share a token budget as in LaMP: each gets an equal share of what the
fixed parts leave, and what one entry leaves unused carries to the next, so a
prompt never exceeds `max_prompt_tokens`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from prlm import PrlmError
from prlm.data.tasks import Task

STYLES = ("no-profile", "rag", "prlm")
THINK_PREFILL = "<think>"


@dataclass
class Prompt:
    user: str
    """The user turn (what the model is asked)."""
    text: str
    """The full model input: chat template applied, pre-fill appended."""
    prefill: str
    """The start of the reply written for the model; part of `text`."""
    num_tokens: int
    entries_used: int


def instruction(task: Task, style: str) -> str:
    if style == "prlm":
        return (
            f"First think step by step inside <think> </think> about how this user writes their "
            f"{task.output_name}s (their words, length and style) and what the new text is about. "
            f"Then write the {task.output_name} this user would write inside <answer> </answer>.\n"
            f"Format example:\n<think>The user ... The text is about ...</think>\n<answer>...</answer>"
        )
    return f"Reply with the {task.output_name} only."


def user_message(task: Task, style: str, text: str, rendered_entries: Sequence[str]) -> str:
    if style not in STYLES:
        raise PrlmError(f"unknown prompt style '{style}'; use one of {', '.join(STYLES)}")
    if style == "no-profile" or not rendered_entries:
        return f"{text}\n\n{instruction(task, style)}"
    if style == "rag":
        # LaMP's layout: entries joined with ", and ", then the input.
        return f"{', and '.join(rendered_entries)}. {text}\n\n{instruction(task, style)}"
    numbered = "\n".join(f"{i}. {e}" for i, e in enumerate(rendered_entries, start=1))
    return (
        f"Past {task.output_name}s written by this user, each for the text in quotes:\n{numbered}\n\n"
        f"{text}\n\n{instruction(task, style)}"
    )


def prefill_for(style: str) -> str:
    return THINK_PREFILL if style == "prlm" else ""


def render_chat(tokenizer, user: str, prefill: str) -> str:
    """Apply the tokenizer's chat template (when it has one) and append the pre-fill.

    Reasoning models' templates may open the reply themselves: DeepSeek-R1-Distill's
    generation prompt ends with `<think>\n`. The pre-fill is then already there and
    is not written a second time (`<think>\n<think>` would teach the model a
    format it was never trained on)."""
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    else:
        head = f"{user}\n"
    if prefill and head.rstrip().lower().endswith(prefill.strip().lower()):
        return head
    return head + prefill


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    if max_tokens <= 0:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


def _share_budget(task: Task, entries: Sequence[dict], tokenizer, budget: int) -> list[str]:
    """Cut each entry's long field to an equal share; unused tokens carry forward."""
    share, carry, rendered = budget // len(entries), 0, []
    for entry in entries:
        allowed = share + carry
        long_ids = tokenizer(str(entry[task.long_field]), add_special_tokens=False)["input_ids"]
        kept = long_ids[: max(allowed, 0)]
        carry = allowed - len(kept)
        text = tokenizer.decode(kept, skip_special_tokens=True) if len(kept) < len(long_ids) else entry[task.long_field]
        rendered.append(task.render_entry(entry, long_text=text))
    return rendered


def build_prompt(
    task: Task, text: str, entries: Sequence[dict], style: str, tokenizer, max_prompt_tokens: int = 1024
) -> Prompt:
    """The model input for one question; never longer than `max_prompt_tokens`."""
    prefill = prefill_for(style)
    entries = list(entries) if style != "no-profile" else []

    def render(rendered_entries: Sequence[str], body: str) -> tuple[str, str, int]:
        user = user_message(task, style, body, rendered_entries)
        full = render_chat(tokenizer, user, prefill)
        return user, full, count_tokens(tokenizer, full)

    # The input may take at most half of the budget when it is too long on its own (as LaMP does).
    body = text
    if render([], body)[2] > max_prompt_tokens:
        body = _truncate(tokenizer, text, max_prompt_tokens // 2)
        if render([], body)[2] > max_prompt_tokens:
            raise PrlmError(
                f"max_prompt_tokens={max_prompt_tokens} cannot hold even the instructions; raise it"
            )
    while entries:
        empty = [task.render_entry(e, long_text="") for e in entries]
        _, _, fixed = render(empty, body)
        budget = max_prompt_tokens - fixed - 2 * len(entries)  # margin: tokens merge across joins
        while budget > 0:
            rendered = _share_budget(task, entries, tokenizer, budget)
            user, full, n = render(rendered, body)
            if n <= max_prompt_tokens:
                return Prompt(user=user, text=full, prefill=prefill, num_tokens=n, entries_used=len(entries))
            budget -= n - max_prompt_tokens
        entries = entries[:-1]  # the fixed parts alone do not fit: drop the least relevant entry
    user, full, n = render([], body)
    return Prompt(user=user, text=full, prefill=prefill, num_tokens=n, entries_used=0)


# --- answer extraction -------------------------------------------------------

_TAG = re.compile(r"</?\s*(think|answer)\s*>", re.IGNORECASE)
_QUOTES = "\"'`“”‘’*"


def clean_answer(text: str, task: Task | None = None) -> str:
    """One line, without tags, surrounding quotes or a leading label like 'Headline:'."""
    text = _TAG.sub(" ", text).strip()
    labels = ["answer", "headline", "title", "subject line", "subject", "tweet", "paraphrase"]
    if task is not None:
        labels.insert(0, task.output_name)
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


@dataclass
class Parsed:
    reasoning: str
    answer: str


def parse_completion(completion: str, style: str, task: Task | None = None, prefill: str = "") -> Parsed:
    """Split a completion into reasoning and answer, tolerating malformed output.

    `prefill` is what the prompt already wrote of the reply (e.g. `<think>`);
    it is put back in front so that tags it opened are seen.
    """
    full = prefill + completion
    if style != "prlm":
        return Parsed(reasoning="", answer=clean_answer(full, task))
    lower = full.lower()
    think_open, think_close = lower.find("<think>"), lower.find("</think>")
    answer_open = lower.find("<answer>")
    reasoning = ""
    if think_open != -1:
        end = think_close if think_close != -1 else (answer_open if answer_open != -1 else len(full))
        reasoning = full[think_open + len("<think>"): end].strip()
    # The answer is what the first <answer> section holds, as in the authors' reward: text after
    # </think> without an answer tag is not an answer (the format was not followed), and the reward
    # and evaluation read the same thing. An unclosed section still counts: generation stops at
    # </answer> (the stop string may be cut off) or at the token budget inside the answer.
    answer = ""
    if answer_open != -1:
        rest = full[answer_open + len("<answer>"):]
        close = rest.lower().find("</answer>")
        answer = clean_answer(rest[:close] if close != -1 else rest, task)
    elif think_open == -1 and think_close == -1:
        # No tag at all: a model that ignored the format entirely; its last line is its answer.
        lines = [ln for ln in _TAG.sub(" ", full).splitlines() if ln.strip()]
        answer = clean_answer(lines[-1], task) if lines else ""
    return Parsed(reasoning=reasoning, answer=answer)


def first_answer_start(completion: str) -> int:
    """Index of the first `<answer>` tag in a completion, -1 when there is none."""
    return completion.lower().find("<answer>")


def prompted_examples(cfg, tokenizer, style: str):
    """(example, prompt, entries used) for every question of `cfg`'s split, with golds:
    retrieval as `cfg` says, then the `style` prompt within `cfg.max_prompt_tokens`.
    `cfg` is a ProfileDataConfig with `seed` and `max_prompt_tokens` (training, SFT)."""
    from prlm.data import get_task, load_split
    from prlm.retrieval import DenseRetriever, make_retriever

    task = get_task(cfg.task)
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None, require_golds=True,
                         allow_empty_profiles=cfg.allow_empty_profiles)
    retriever = make_retriever(cfg.retriever, task, seed=cfg.seed, encoder=cfg.encoder)
    if isinstance(retriever, DenseRetriever):
        retriever.prepare([ex.input for ex in dataset.examples], [ex.profile for ex in dataset.examples])
    for ex in dataset.examples:
        entries, _ = retriever(ex.input, ex.profile, cfg.k)
        prompt = build_prompt(task, ex.input, entries, style, tokenizer, cfg.max_prompt_tokens)
        yield ex, prompt, entries[:prompt.entries_used]


MAX_PROMPT_TOKENS = 512
"""The default token limit of every prompt, in every command: the paper cuts prompts at 512 tokens, and every
recipe measured here uses 512."""
