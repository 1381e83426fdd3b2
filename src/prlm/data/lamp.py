"""Loading and validating data in LaMP's schema and file layout.

A split is two files: `{split}_questions.json` (a list of questions, each with
its user's profile) and `{split}_outputs.json` (`{"task", "golds"}`). Both
LaMP's download layout (`DIR/{split}/{split}_questions.json`) and the flat
layout (`DIR/{split}_questions.json`) are accepted. Every problem is reported
with the file, the record and the field, so it can be fixed at the source.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from prlm import PrlmError
from prlm.data.tasks import TASKS, Task, get_task, known_task_name
from prlm.io import atomic_write_json

SPLITS = ("train", "dev", "test")
MAX_PROFILE_ENTRIES = 20_000


@dataclass
class Example:
    id: str
    user_id: str
    input: str
    profile: list[dict]
    gold: str | None = None


@dataclass
class Dataset:
    task: Task
    split: str
    examples: list[Example]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def has_golds(self) -> bool:
        return all(ex.gold is not None for ex in self.examples)


def split_files(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """Find the questions and outputs files of a split in either layout."""
    if split not in SPLITS:
        raise PrlmError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PrlmError(f"data directory '{data_dir}' does not exist")
    for folder in (data_dir, data_dir / split):
        questions = folder / f"{split}_questions.json"
        if questions.is_file():
            return questions, folder / f"{split}_outputs.json"
    raise PrlmError(
        f"no questions file for split '{split}' in '{data_dir}': looked for "
        f"{split}_questions.json and {split}/{split}_questions.json"
    )


def read_json(path: Path):
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PrlmError(f"{path}: cannot read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PrlmError(f"{path}: not UTF-8 text (invalid byte at offset {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PrlmError(f"{path}: line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") from None


def _where(path: Path, index: int, record) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{path}: record {index}" + (f" (id '{rid}')" if rid is not None else "")


def _require_str(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise PrlmError(f"{where}: missing field '{key}'")
    value = record[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "id":
        return str(value)
    if not isinstance(value, str):
        raise PrlmError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def _parse_profile(record: dict, task: Task, where: str, allow_empty: bool, max_entries: int) -> list[dict]:
    profile = record.get("profile")
    if profile is None:
        raise PrlmError(f"{where}: missing field 'profile'")
    if not isinstance(profile, list):
        raise PrlmError(f"{where}: field 'profile' must be a list, got {type(profile).__name__}")
    if not profile and not allow_empty:
        raise PrlmError(f"{where}: field 'profile' is empty (pass allow_empty_profiles to accept it)")
    if len(profile) > max_entries:
        raise PrlmError(
            f"{where}: field 'profile' has {len(profile)} entries, over the limit of {max_entries} "
            "(raise max_profile_entries if this is intended)"
        )
    entries = []
    for j, entry in enumerate(profile):
        entry_where = f"{where}: profile entry {j}"
        if not isinstance(entry, dict):
            raise PrlmError(f"{entry_where}: must be an object, got {type(entry).__name__}")
        entry_where += f" (id '{entry.get('id')}')" if "id" in entry else ""
        clean = dict(entry)
        for key in ("id",) + task.entry_fields:
            clean[key] = _require_str(entry, key, entry_where)
        entries.append(clean)
    return entries


def parse_questions(
    path: Path, task: Task, allow_empty_profiles: bool = False, max_profile_entries: int = MAX_PROFILE_ENTRIES
) -> list[Example]:
    data = read_json(path)
    if not isinstance(data, list):
        raise PrlmError(f"{path}: expected a list of questions, got {type(data).__name__}")
    examples, seen = [], {}
    for i, record in enumerate(data):
        where = _where(path, i, record)
        if not isinstance(record, dict):
            raise PrlmError(f"{where}: must be an object, got {type(record).__name__}")
        qid = _require_str(record, "id", where)
        if qid in seen:
            raise PrlmError(f"{where}: duplicate id '{qid}' (also record {seen[qid]})")
        seen[qid] = i
        text = _require_str(record, "input", where)
        # User-based LaMP splits carry no user_id: each question is its own user.
        user = _require_str(record, "user_id", where) if "user_id" in record else qid
        profile = _parse_profile(record, task, where, allow_empty_profiles, max_profile_entries)
        examples.append(Example(id=qid, user_id=user, input=text, profile=profile))
    return examples


def parse_outputs(path: Path) -> tuple[str | None, dict[str, str]]:
    data = read_json(path)
    if not isinstance(data, dict) or "golds" not in data:
        raise PrlmError(f"{path}: expected an object with a 'golds' list")
    if not isinstance(data["golds"], list):
        raise PrlmError(f"{path}: field 'golds' must be a list")
    golds: dict[str, str] = {}
    for i, record in enumerate(data["golds"]):
        where = f"{path}: golds[{i}]" + (f" (id '{record.get('id')}')" if isinstance(record, dict) else "")
        if not isinstance(record, dict):
            raise PrlmError(f"{where}: must be an object")
        gid = _require_str(record, "id", where)
        if gid in golds:
            raise PrlmError(f"{where}: duplicate id '{gid}'")
        golds[gid] = _require_str(record, "output", where)
    return data.get("task"), golds


def _check_same_ids(questions_path: Path, outputs_path: Path, qids: list[str], golds: dict[str, str]) -> None:
    missing = [q for q in qids if q not in golds]
    extra = sorted(set(golds) - set(qids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} question(s) have no gold output (e.g. '{missing[0]}')")
        if extra:
            parts.append(f"{len(extra)} gold output(s) have no question (e.g. '{extra[0]}')")
        raise PrlmError(f"{questions_path} and {outputs_path}: ids differ: " + "; ".join(parts))


def _prefix_evidence(task: Task, inputs: list[str]) -> tuple[str, str] | None:
    """(other task, evidence) when most inputs start with another task's instruction
    and not with `task`'s; None when the inputs do not point elsewhere (custom
    data without any known instruction is fine)."""
    if not inputs:
        return None
    own = sum(text.startswith(task.input_prefix) for text in inputs)
    if own * 2 >= len(inputs):
        return None
    for other in TASKS.values():
        if other.input_prefix == task.input_prefix:
            continue
        hits = sum(text.startswith(other.input_prefix) for text in inputs)
        if hits * 2 > len(inputs):
            return other.name, (f"{hits} of {len(inputs)} inputs start with '{other.input_prefix.strip()}' "
                                f"(task {other.name}'s instruction), {own} with {task.name}'s "
                                f"'{task.input_prefix.strip()}'")
    return None


def check_task(task: Task, inputs: list[str], declared: object, questions_path: Path, outputs_path: Path) -> None:
    """Refuse data that say they belong to another task: the outputs file's `task`
    field, or the instruction most inputs start with. A wrong `--task` otherwise
    runs silently with the wrong prompt (a tweet prompt on commit messages)."""
    declared_name = known_task_name(declared)
    if declared_name is not None and declared_name != task.name:
        other, evidence = declared_name, f"{outputs_path} says \"task\": \"{declared}\""
        where = outputs_path
    else:
        found = _prefix_evidence(task, inputs)
        if found is None:
            return
        (other, evidence), where = found, questions_path
    raise PrlmError(f"{where}: the data belong to task {other}, not {task.name}: {evidence}. "
                    f"Pass --task {other}, or --allow-task-mismatch to use them as {task.name} anyway")


def load_split(
    data_dir: str | Path,
    split: str,
    task: str | Task,
    limit: int | None = None,
    allow_empty_profiles: bool = False,
    max_profile_entries: int = MAX_PROFILE_ENTRIES,
    require_golds: bool = False,
    allow_task_mismatch: bool = False,
) -> Dataset:
    """Load and validate one split. Golds are attached when the outputs file exists.

    Unless `allow_task_mismatch`, data whose outputs file or input instruction
    names another task are refused (see `check_task`)."""
    task = get_task(task) if isinstance(task, str) else task
    questions_path, outputs_path = split_files(data_dir, split)
    examples = parse_questions(questions_path, task, allow_empty_profiles, max_profile_entries)
    declared = None
    if outputs_path.is_file():
        declared, golds = parse_outputs(outputs_path)
        _check_same_ids(questions_path, outputs_path, [ex.id for ex in examples], golds)
        for ex in examples:
            ex.gold = golds[ex.id]
    elif require_golds:
        raise PrlmError(f"{outputs_path}: not found; evaluation needs the gold outputs of split '{split}' "
                        "(`prlm eval --predict-only` writes predictions without golds, e.g. a LaMP test submission)")
    if not allow_task_mismatch:
        check_task(task, [ex.input for ex in examples], declared, questions_path, outputs_path)
    if limit is not None:
        examples = examples[:limit]
    return Dataset(task=task, split=split, examples=examples, source=str(questions_path))


def save_split(data_dir: str | Path, split: str, task: Task, examples: list[Example]) -> None:
    """Write a split in LaMP's flat layout, atomically."""
    data_dir = Path(data_dir)
    questions = [
        {"id": ex.id, "user_id": ex.user_id, "input": ex.input, "profile": ex.profile} for ex in examples
    ]
    golds = {"task": task.name, "golds": [{"id": ex.id, "output": ex.gold} for ex in examples]}
    atomic_write_json(data_dir / f"{split}_questions.json", questions, indent=None)
    atomic_write_json(data_dir / f"{split}_outputs.json", golds, indent=None)


def split_stats(dataset: Dataset) -> dict:
    """Statistics `prlm data check` prints for a split."""
    sizes = [len(ex.profile) for ex in dataset.examples] or [0]
    gold_words = [len(ex.gold.split()) for ex in dataset.examples if ex.gold is not None]
    return {
        "split": dataset.split,
        "questions": len(dataset),
        "users": len({ex.user_id for ex in dataset.examples}),
        "profile_min": min(sizes),
        "profile_mean": round(statistics.mean(sizes), 1),
        "profile_max": max(sizes),
        "input_chars_mean": round(statistics.mean(len(ex.input) for ex in dataset.examples), 1)
        if dataset.examples
        else 0,
        "gold_words_mean": round(statistics.mean(gold_words), 1) if gold_words else None,
        **_longest_gold(dataset),
        "golds": dataset.has_golds,
    }


def _longest_gold(dataset: Dataset) -> dict:
    """The longest gold output, words and id: a paragraph-long 'subject' shows here, not in the mean."""
    with_golds = [ex for ex in dataset.examples if ex.gold is not None]
    if not with_golds:
        return {"gold_words_max": None, "longest_gold_id": None}
    longest = max(with_golds, key=lambda ex: len(ex.gold.split()))
    return {"gold_words_max": len(longest.gold.split()), "longest_gold_id": longest.id}


def check_splits(data_dir: str | Path, split: str, task: str | Task, allow_empty_profiles: bool = False,
                 allow_task_mismatch: bool = False) -> list[dict]:
    """`prlm data check`: the statistics of `split` (or of every split found, with 'all'), each split loaded and
    validated; a split with no question is refused (every command would have nothing to do on it)."""
    found = []
    for name in SPLITS if split == "all" else (split,):
        try:
            questions, _ = split_files(data_dir, name)
        except PrlmError:
            if split != "all":
                raise
            continue
        dataset = load_split(data_dir, name, task, allow_empty_profiles=allow_empty_profiles,
                             allow_task_mismatch=allow_task_mismatch)
        if not dataset.examples:
            raise PrlmError(f"{questions}: split '{name}' has no questions; add some, or remove its files if the "
                            "dataset has no such split")
        found.append(split_stats(dataset))
    if not found:
        raise PrlmError(f"no split found in '{data_dir}' (expected {{train,dev,test}}_questions.json)")
    return found
