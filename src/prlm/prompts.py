"""Prompts for the three methods and the profile token budget.

Methods (`PROMPT_METHODS`, the `method` of evaluation):
- `no-profile`: the input alone.
- `rag`: LaMP's plain RAG prompt, the retrieved entries then the input.
- `prlm`: the reasoning prompt; the model reasons about the entries inside
  `<think>` and answers inside `<answer>`. The reply is pre-filled with
  `<think>` so that small models start in the format (`prlm.answers` holds
  that format: pre-fill, stop string, answer extraction, format check).

The reasoning prompt has three wordings (`PROMPT_STYLES`, the `prompt` option of
training and evaluation): prlm's own, prlm's own with the reasoning left empty
(`prlm-answer-only`: the reply pre-filled up to `<answer>`), and the authors' (`authors`: their
system prompt, their LaMP user prompt, and the answer as `{'title': '...'}`
inside `<answer>`; `authors-user`: the same user prompt without the system
prompt, as their evaluation script prompts). docs/paper-recipe.md cites them.

Entries share a token budget as in LaMP: each gets an equal share of what the
fixed parts leave, and what one entry leaves unused carries to the next, so a
prompt never exceeds `max_prompt_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prlm import PrlmError
from prlm.answers import ANSWER_ONLY_STYLE, REASONING_METHOD, THINK_OPEN, prefill_for
from prlm.data.tasks import Task

PROMPT_METHODS = ("no-profile", "rag", REASONING_METHOD)
PROMPT_STYLES = ("prlm", "authors", "authors-user", ANSWER_ONLY_STYLE)
AUTHORS_STYLES = ("authors", "authors-user")
PROMPT_STYLE_HELP = ("Wording of the reasoning prompt (method prlm): 'prlm' (prlm's own), 'prlm-answer-only' (prlm's "
                     "own, the reply pre-filled with an empty <think></think> and <answer>: the ablation without "
                     "reasoning), 'authors' (the PrLM "
                     "release's system prompt and LaMP user prompt, the answer as {'title': '...'} inside <answer>), "
                     "'authors-user' (their user prompt without the system prompt, as their evaluation script "
                     "prompts). docs/paper-recipe.md.")

# The PrLM release's system prompt (ke-01/PrLM, Model_Train/recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/
# config_lamp4.yaml, `system_prompt`; the same for LaMP-5 and LaMP-7), verbatim: a prompt is data, and a
# reproduction of their run needs the same one (its closing full stop is the ideographic one of the original).
AUTHORS_SYSTEM_PROMPT = (
    "You are a professional personalized recommendation assistant, capable of accurately inferring user "
    "preferences as well as the preferences implied by the current query based on historical records, and the "
    "content of the query. You first analyze the user's historical behavior patterns, past expressions of "
    "preferences, and the context of the current query, and then combine this information for comprehensive "
    "reasoning. You treat the reasoning process as an internal monologue, then provide the answer to the user. "
    "Use the following format to reply: <think>\n...\n</think>\n<answer>\n......\n</answer>\u3002"
)


@dataclass(frozen=True)
class AuthorsFormat:
    """How the release's LaMP prompts read (Personal_RAG/prompts/prompts.py, pre_process.py): the header before
    the entries, one entry, the request, the answer's key (`{'title': 'generated title'}`), the query."""

    header: str
    entry: str
    request: str
    key: str
    query: str
    tail: str
    sep: str = " "
    """Between the request and the answer format: a space (LaMP-4, LaMP-5) or a new line (LaMP-7)."""

    @property
    def placeholder(self) -> str:
        """The value the prompt's format example holds ('generated title'): an answer that repeats it parrots."""
        return f"generated {self.key}"

    def format_line(self) -> str:
        return (f"Please generate it in the following format: {{'{self.key}': '{self.placeholder}'}} without "
                "explanation, and use only English.")


_AUTHORS_TITLE = dict(header="The historical profiles are as follows:", key="title", tail=" 'title':")
AUTHORS_FORMATS = {
    "LaMP-4": AuthorsFormat(**_AUTHORS_TITLE, entry="'text': '{text}' 'title': '{title}'",
                            request="Based on the historical profiles provided, please generate a title for the "
                                    "given user's input text.", query="'text': '{query}'"),
    "LaMP-5": AuthorsFormat(**_AUTHORS_TITLE, entry="'abstract': '{abstract}' 'title': '{title}'",
                            request="Based on the historical profiles provided, please generate a title for the "
                                    "given user's input abstract.", query="'abstract': '{query}'"),
    "LaMP-7": AuthorsFormat(header="The historical tweets are as follows:", key="tweet", tail="",
                            entry="'tweet': '{text}'", query="{query}", sep="\n",
                            request="Based on the style pattern of the historical tweets provided, please "
                                    "paraphrase the user's input tweet without any explanation before or after it."),
}


def authors_format(task: Task) -> AuthorsFormat:
    """The release's prompt format for `task`: its own for LaMP-4/5/7, LaMP-4's for the other headline-like
    tasks (an entry with `text` and `title`)."""
    if task.name in AUTHORS_FORMATS:
        return AUTHORS_FORMATS[task.name]
    if {"text", "title"} <= set(task.entry_fields):
        return AUTHORS_FORMATS["LaMP-4"]
    raise PrlmError(f"prompt 'authors' has no format for task {task.name} (LaMP-4, LaMP-5, LaMP-7 and tasks whose "
                    "entries have text and title); use prompt: prlm")


def check_prompt_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise PrlmError(f"prompt='{style}' is not valid; use one of: {', '.join(PROMPT_STYLES)}")


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


def user_message(task: Task, method: str, text: str, rendered_entries: Sequence[str], style: str = "prlm") -> str:
    if method not in PROMPT_METHODS:
        raise PrlmError(f"unknown prompt method '{method}'; use one of {', '.join(PROMPT_METHODS)}")
    if method == REASONING_METHOD and style in AUTHORS_STYLES:
        return authors_user_message(task, text, rendered_entries)
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


def authors_user_message(task: Task, text: str, rendered_entries: Sequence[str]) -> str:
    """The release's user prompt: the entries one per line under their header, the request, the answer format,
    then the input (`'text': '...' 'title':`); without entries, the request alone."""
    fmt = authors_format(task)
    query = fmt.query.format(query=task.query(text))
    if not rendered_entries:
        request = fmt.request.split("provided, ", 1)[-1]
        return f"{request[0].upper()}{request[1:]}{fmt.sep}{fmt.format_line()}\n{query}{fmt.tail}"
    entries = "".join(f"{e}\n" for e in rendered_entries)
    return f"{fmt.header}\n{entries}\n{fmt.request}{fmt.sep}{fmt.format_line()}\n{query}{fmt.tail}"


def authors_entry(task: Task, entry: dict, long_text: str | None = None) -> str:
    """One profile entry as the release renders it (`'text': '...' 'title': '...'`)."""
    values = {f: entry[f] for f in task.entry_fields}
    if long_text is not None:
        values[task.long_field] = long_text
    return authors_format(task).entry.format(**values)


def system_message(method: str, style: str) -> str | None:
    """The system prompt of a reasoning prompt in the authors' wording; None otherwise."""
    return AUTHORS_SYSTEM_PROMPT if method == REASONING_METHOD and style == "authors" else None


def render_chat(tokenizer, user: str, prefill: str, system: str | None = None) -> str:
    """Apply the tokenizer's chat template (when it has one) and append the pre-fill.

    Reasoning models' templates may open the reply themselves: DeepSeek-R1-Distill's
    generation prompt ends with `<think>\n`. The pre-fill is then already there and
    is not written a second time (`<think>\n<think>` would teach the model a
    format it was never trained on). `system`: a system message put first (as a first paragraph without a
    chat template)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        head = (f"{system}\n\n" if system else "") + f"{user}\n"
    if prefill and head.rstrip().lower().endswith(prefill.strip().lower()):
        return head
    if prefill.lower().startswith(THINK_OPEN) and head.rstrip().lower().endswith(THINK_OPEN):
        return head + prefill[len(THINK_OPEN):]  # the template opened the reasoning; the pre-fill goes on from it
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


def _share_budget(task: Task, entries: Sequence[dict], tokenizer, budget: int, render_entry) -> list[str]:
    """Cut each entry's long field to an equal share; unused tokens carry forward. `render_entry(entry,
    long_text)` writes one entry."""
    share, carry, rendered = budget // len(entries), 0, []
    for entry in entries:
        allowed = share + carry
        long_ids = tokenizer(str(entry[task.long_field]), add_special_tokens=False)["input_ids"]
        kept = long_ids[: max(allowed, 0)]
        carry = allowed - len(kept)
        cut = len(kept) < len(long_ids)
        text = tokenizer.decode(kept, skip_special_tokens=True) if cut else entry[task.long_field]
        rendered.append(render_entry(entry, long_text=text))
    return rendered


def build_prompt(
    task: Task, text: str, entries: Sequence[dict], method: str, tokenizer, max_prompt_tokens: int = 1024,
    style: str = "prlm",
) -> Prompt:
    """The model input for one question; never longer than `max_prompt_tokens`. `style`: the wording of the
    reasoning prompt (`PROMPT_STYLES`)."""
    check_prompt_style(style)
    prefill = prefill_for(method, style)
    entries = list(entries) if method != "no-profile" else []
    authors = method == REASONING_METHOD and style in AUTHORS_STYLES
    system = system_message(method, style)

    def render_entry(entry: dict, long_text: str | None = None) -> str:
        return authors_entry(task, entry, long_text) if authors else task.render_entry(entry, long_text=long_text)

    def render(rendered_entries: Sequence[str], body: str) -> tuple[str, str, int]:
        user = user_message(task, method, body, rendered_entries, style)
        full = render_chat(tokenizer, user, prefill, system)
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
        empty = [render_entry(e, long_text="") for e in entries]
        _, _, fixed = render(empty, body)
        budget = max_prompt_tokens - fixed - 2 * len(entries)  # margin: tokens merge across joins
        while budget > 0:
            rendered = _share_budget(task, entries, tokenizer, budget, render_entry)
            user, full, n = render(rendered, body)
            if n <= max_prompt_tokens:
                return Prompt(user=user, text=full, prefill=prefill, num_tokens=n, entries_used=len(entries))
            budget -= n - max_prompt_tokens
        entries = entries[:-1]  # the fixed parts alone do not fit: drop the least relevant entry
    user, full, n = render([], body)
    return Prompt(user=user, text=full, prefill=prefill, num_tokens=n, entries_used=0)


def build_prompts(task: Task, examples: Sequence, hits: Sequence, method: str, tokenizer,
                  max_prompt_tokens: int, style: str = "prlm") -> list[Prompt]:
    """The `method` prompt of each question of `examples`, with its retrieved (entries, scores) from `hits`."""
    return [build_prompt(task, ex.input, entries, method, tokenizer, max_prompt_tokens, style)
            for ex, (entries, _) in zip(examples, hits)]


def prompted_examples(cfg, tokenizer, method: str, retriever=None):
    """(example, prompt, entries used) for every question of `cfg`'s split, with golds:
    retrieval as `cfg` says (or by `retriever`, e.g. a `RankedRetriever` of rankings computed once),
    then the `method` prompt within `cfg.max_prompt_tokens`.
    `cfg` is a ProfileDataConfig with `seed` and `max_prompt_tokens` (training, SFT), and `prompt` (the
    wording, `PROMPT_STYLES`) where it has one."""
    from prlm.data import get_task, load_split
    from prlm.retrieval import make_retriever, retrieve_each

    task = get_task(cfg.task)
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None, require_golds=True,
                         allow_empty_profiles=cfg.allow_empty_profiles)
    if retriever is None:
        retriever = make_retriever(cfg.retriever, task, seed=cfg.seed, encoder=cfg.encoder)
    hits = retrieve_each(retriever, dataset.examples, cfg.k)
    for ex, (entries, _) in zip(dataset.examples, hits):
        prompt = build_prompt(task, ex.input, entries, method, tokenizer, cfg.max_prompt_tokens,
                              getattr(cfg, "prompt", "prlm"))
        yield ex, prompt, entries[:prompt.entries_used]


MAX_PROMPT_TOKENS = 512
"""The default token limit of every prompt, in every command: the paper cuts prompts at 512 tokens, and every
recipe measured here uses 512."""
