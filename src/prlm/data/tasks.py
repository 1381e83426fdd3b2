"""The task table: everything that differs between personalized tasks.

Adding a task in LaMP's schema is one `Task(...)` entry in `TASKS`: which
fields a profile entry carries, how the query is cut out of the input, how an
entry reads in a prompt, and what the output is called.
"""

from __future__ import annotations

from dataclasses import dataclass

from prlm import PrlmError


@dataclass(frozen=True)
class Task:
    name: str
    input_prefix: str
    """LaMP's instruction at the start of every input; stripped to get the query."""
    entry_fields: tuple[str, ...]
    """Fields every profile entry must carry, besides `id`."""
    retrieval_fields: tuple[str, ...]
    """Entry fields joined with a space to form the text a retriever indexes."""
    long_field: str
    """The entry field cut to fit the prompt's token budget."""
    entry_template: str
    """How one profile entry reads in a prompt (str.format over the entry)."""
    output_field: str
    """The entry field that holds what the user wrote (their past output)."""
    output_name: str
    """What the output is called in prompts: headline, title, tweet..."""

    def query(self, text: str) -> str:
        """The part of an input that retrieval matches against the profile."""
        if text.startswith(self.input_prefix):
            return text[len(self.input_prefix):].strip()
        return text.strip()

    def entry_text(self, entry: dict) -> str:
        return " ".join(str(entry[f]) for f in self.retrieval_fields)

    def render_entry(self, entry: dict, long_text: str | None = None) -> str:
        """One entry for a prompt; `long_text` replaces the (truncated) long field."""
        values = {f: entry[f] for f in self.entry_fields}
        if long_text is not None:
            values[self.long_field] = long_text
        return self.entry_template.format(**values)


_HEADLINE_LIKE = dict(
    entry_fields=("text", "title", "date"),
    retrieval_fields=("title", "text"),
    long_field="text",
    entry_template='"{title}" is the {name} for "{text}"',
    output_field="title",
)


def _headline_like(name: str, prefix: str, output_name: str) -> Task:
    spec = dict(_HEADLINE_LIKE)
    spec["entry_template"] = spec["entry_template"].replace("{name}", output_name)
    return Task(name=name, input_prefix=prefix, output_name=output_name, **spec)


TASKS: dict[str, Task] = {
    "LaMP-4": _headline_like("LaMP-4", "Generate a headline for the following article: ", "headline"),
    "LaMP-5": Task(
        name="LaMP-5",
        input_prefix="Generate a title for the following abstract of a paper: ",
        entry_fields=("abstract", "title", "date"),
        retrieval_fields=("title", "abstract"),
        long_field="abstract",
        entry_template='"{title}" is the title for "{abstract}"',
        output_field="title",
        output_name="title",
    ),
    "LaMP-7": Task(
        name="LaMP-7",
        input_prefix="Paraphrase the following tweet without any explanation before or after it: ",
        entry_fields=("text", "date"),
        retrieval_fields=("text",),
        long_field="text",
        entry_template='"{text}"',
        output_field="text",
        output_name="tweet",
    ),
    "commit-subject": _headline_like(
        "commit-subject", "Generate a subject line for the following commit message: ", "subject line"
    ),
    "synthetic": _headline_like("synthetic", "Generate a headline for the following article: ", "headline"),
}

# LaMP's own names for the same tasks, as found in outputs files ("task": "LaMP_4").
ALIASES = {"LaMP_4": "LaMP-4", "LaMP_5": "LaMP-5", "LaMP_7": "LaMP-7"}
# ...and the other way: LaMP's evaluator (`evaluate_task`) asserts the outputs
# file's task equals "LaMP_4" etc., so submissions must carry these names.
LAMP_NAMES = {name: alias for alias, name in ALIASES.items()}


def submission_name(task: Task | str) -> str:
    """The task name written into prediction files: LaMP's own (`LaMP_4`) for
    LaMP tasks, so that LaMP's evaluator accepts them; the table's name otherwise."""
    name = task.name if isinstance(task, Task) else get_task(task).name
    return LAMP_NAMES.get(name, name)


def known_task_name(name: object) -> str | None:
    """The table's name for `name` (an outputs file's `task` field), None when it names no known task."""
    if not isinstance(name, str):
        return None
    name = ALIASES.get(name, name)
    return name if name in TASKS else None


def get_task(name: str) -> Task:
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise PrlmError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
