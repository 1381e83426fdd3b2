"""Prompts for the three methods and the profile token budget.

Methods (`PROMPT_METHODS`, the `method` of evaluation):
- `no-profile`: the input alone.
- `rag`: LaMP's plain RAG prompt, the retrieved entries then the input.
- `prlm`: the reasoning prompt; the model reasons about the entries inside
  `<think>` and answers inside `<answer>`. The reply is pre-filled with
  `<think>` so that small models start in the format (`prlm.answers` holds
  that format: pre-fill, stop string, answer extraction, format check).

Entries share a token budget as in LaMP: each gets an equal share of what the
fixed parts leave, and what one entry leaves unused carries to the next, so a
prompt never exceeds `max_prompt_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prlm import PrlmError
from prlm.answers import REASONING_METHOD, prefill_for
from prlm.data.tasks import Task

PROMPT_METHODS = ("no-profile", "rag", REASONING_METHOD)


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


def instruction(task: Task, method: str) -> str:
    if method == REASONING_METHOD:
        return (
            f"First think step by step inside <think> </think> about how this user writes their "
            f"{task.output_name}s (their words, length and style) and what the new text is about. "
            f"Then write the {task.output_name} this user would write inside <answer> </answer>.\n"
            f"Format example:\n<think>The user ... The text is about ...</think>\n<answer>...</answer>"
        )
    return f"Reply with the {task.output_name} only."


def user_message(task: Task, method: str, text: str, rendered_entries: Sequence[str]) -> str:
    if method not in PROMPT_METHODS:
        raise PrlmError(f"unknown prompt method '{method}'; use one of {', '.join(PROMPT_METHODS)}")
    if method == "no-profile" or not rendered_entries:
        return f"{text}\n\n{instruction(task, method)}"
    if method == "rag":
        # LaMP's layout: entries joined with ", and ", then the input.
        return f"{', and '.join(rendered_entries)}. {text}\n\n{instruction(task, method)}"
    numbered = "\n".join(f"{i}. {e}" for i, e in enumerate(rendered_entries, start=1))
    return (
        f"Past {task.output_name}s written by this user, each for the text in quotes:\n{numbered}\n\n"
        f"{text}\n\n{instruction(task, method)}"
    )


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
        cut = len(kept) < len(long_ids)
        text = tokenizer.decode(kept, skip_special_tokens=True) if cut else entry[task.long_field]
        rendered.append(task.render_entry(entry, long_text=text))
    return rendered


def build_prompt(
    task: Task, text: str, entries: Sequence[dict], method: str, tokenizer, max_prompt_tokens: int = 1024
) -> Prompt:
    """The model input for one question; never longer than `max_prompt_tokens`."""
    prefill = prefill_for(method)
    entries = list(entries) if method != "no-profile" else []

    def render(rendered_entries: Sequence[str], body: str) -> tuple[str, str, int]:
        user = user_message(task, method, body, rendered_entries)
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


def build_prompts(task: Task, examples: Sequence, hits: Sequence, method: str, tokenizer,
                  max_prompt_tokens: int) -> list[Prompt]:
    """The `method` prompt of each question of `examples`, with its retrieved (entries, scores) from `hits`."""
    return [build_prompt(task, ex.input, entries, method, tokenizer, max_prompt_tokens)
            for ex, (entries, _) in zip(examples, hits)]


def prompted_examples(cfg, tokenizer, method: str, retriever=None):
    """(example, prompt, entries used) for every question of `cfg`'s split, with golds:
    retrieval as `cfg` says (or by `retriever`, e.g. a `RankedRetriever` of rankings computed once),
    then the `method` prompt within `cfg.max_prompt_tokens`.
    `cfg` is a ProfileDataConfig with `seed` and `max_prompt_tokens` (training, SFT)."""
    from prlm.data import get_task, load_split
    from prlm.retrieval import make_retriever, retrieve_each

    task = get_task(cfg.task)
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None, require_golds=True,
                         allow_empty_profiles=cfg.allow_empty_profiles)
    if retriever is None:
        retriever = make_retriever(cfg.retriever, task, seed=cfg.seed, encoder=cfg.encoder)
    hits = retrieve_each(retriever, dataset.examples, cfg.k)
    for ex, (entries, _) in zip(dataset.examples, hits):
        prompt = build_prompt(task, ex.input, entries, method, tokenizer, cfg.max_prompt_tokens)
        yield ex, prompt, entries[:prompt.entries_used]


MAX_PROMPT_TOKENS = 512
"""The default token limit of every prompt, in every command: the paper cuts prompts at 512 tokens, and every
recipe measured here uses 512."""
