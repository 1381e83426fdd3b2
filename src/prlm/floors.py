"""The trivial floors every results table carries: answers made without a model.

As `../shared/data/README.md` measures them (ROUGE with rouge-score, no stemming):

- `floor-first-words`: the first ten words of the input's text (a commit message's body after the
  instruction);
- `floor-recent-title`: the user's most recent past output: the first profile entry, as the shared data
  list profiles newest first (by commit order: on git-commit-subject 95 of 157 test profiles are not
  ordered by their author dates, and the README's figure is the first entry's);
- `floor-bm25-title`: the past output of the profile entry nearest to the input by BM25 (the `bm25`
  retriever: rank_bm25's Okapi scores over each entry's retrieval text, whitespace tokens; ties keep the
  earlier entry).

A method that does not beat all three has learnt nothing about the user that copying would not give.
`run_floor` writes a run folder like `prlm eval`'s, which `prlm results add` keeps as a record.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from prlm import PrlmError
from prlm.data import Example, Task, get_task, load_split
from prlm.evaluation import environment, score_predictions, write_run
from prlm.retrieval import BM25Retriever

FIRST_WORDS = 10
FLOORS = ("floor-first-words", "floor-recent-title", "floor-bm25-title")


def first_words(task: Task, example: Example) -> str:
    return " ".join(task.query(example.input).split()[:FIRST_WORDS])


def recent_output(task: Task, example: Example) -> str:
    return str(example.profile[0][task.output_field]) if example.profile else ""


def bm25_nearest_output(task: Task, example: Example, retriever: BM25Retriever | None = None) -> str:
    nearest, _ = (retriever or BM25Retriever(task))(task.query(example.input), example.profile, 1)
    return str(nearest[0][task.output_field]) if nearest else ""


ANSWERS = {"floor-first-words": first_words, "floor-recent-title": recent_output,
           "floor-bm25-title": bm25_nearest_output}


def run_floor(name: str, task_name: str, data: str | Path, split: str, out: str | Path) -> dict:
    """Answer every question of `split` with floor `name`, score it and write a run folder to `out`."""
    if name not in ANSWERS:
        raise PrlmError(f"unknown floor '{name}'; use one of {', '.join(FLOORS)}")
    started = time.time()
    task = get_task(task_name)
    examples = load_split(data, split, task, allow_empty_profiles=True, require_golds=True).examples
    answer = ANSWERS[name]
    if name == "floor-bm25-title":  # one retriever for the split: its caches of tokenised entries are reused
        answer = partial(bm25_nearest_output, retriever=BM25Retriever(task))
    answers = {ex.id: answer(task, ex) for ex in examples}
    per_example, means = score_predictions(answers, {ex.id: ex.gold for ex in examples}, with_meteor=False)
    rows = [{"id": ex.id, "user_id": ex.user_id, "answer": answers[ex.id], "gold": ex.gold,
             "metrics": per_example[ex.id]} for ex in examples]
    summary = {"name": Path(out).name, "task": task.name, "data": str(data), "split": split, "n": len(rows),
               "metrics": means, "config": {"method": name, "retriever": "none", "k": 0},
               "environment": environment(), "wall_time_s": round(time.time() - started, 2)}
    write_run(out, rows, summary, task.name)
    return summary
