"""Measures of how personal a policy's answers are, for comparing policies (issue 14, target 4).

* :func:`judge_rows`: the *judge*, a reward model trained like the
  personalization reward model but on users disjoint from its training users
  (``prlm rm train --role judge``), scores each answer with the question's
  profile context. A policy trained against the reward model cannot have
  learned to fool it. Compare two policies by the per-question difference of
  ``judge_score`` (paired bootstrap over questions).
* :func:`style_rows`: a plain style measure that needs no model, for commit
  subjects: whether the answer's area prefix (``mingw:``, ``t0014:``, the text
  before the first ": " when it looks like an area) equals the gold's, and
  whether the answer's casing (first letter, after the area prefix) and length
  bucket match the user's habit in their profile titles.

Both take an evaluation run's predictions (rows with ``id``, ``user_id``,
``answer``, ``gold``) and the questions of the same split (for the input and
the profile); :func:`judge_run` and :func:`style_run` read them from a run
folder and a dataset folder.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from prlm import PrlmError

# An area: one token of letters, digits and . / _ - + * , ( ) { } [ ], at most 40 characters ("t/helper",
# "submodule--helper", "ci(windows)"); a prefix with a space or a quote is a sentence, not an area.
_AREA = re.compile(r"^[\w./+*,(){}\[\]-]{1,40}$")
LENGTH_BUCKETS = (4, 7, 10)  # words: <= 4, 5-7, 8-10, >= 11


def area_prefix(text: str) -> str:
    """The area prefix of a subject line ('mingw' for 'mingw: fix ...'), '' when there is none."""
    head, sep, _ = text.strip().partition(": ")
    return head if sep and _AREA.match(head) else ""


def first_letter_case(text: str) -> str:
    """'lower' or 'upper': the case of the first letter after the area prefix ('' when there is no letter)."""
    prefix = area_prefix(text)
    rest = text.strip()[len(prefix) + 2:] if prefix else text.strip()
    for ch in rest:
        if ch.isalpha() and ch.lower() != ch.upper():
            return "upper" if ch.isupper() else "lower"
    return ""


def length_bucket(text: str) -> int:
    words = len(text.split())
    return sum(words > edge for edge in LENGTH_BUCKETS)


def user_habit(titles: Sequence[str]) -> dict:
    """The user's most common casing and length bucket over their past titles (None when there are none)."""
    cases = Counter(c for c in map(first_letter_case, titles) if c)
    buckets = Counter(map(length_bucket, titles))
    return {"case": cases.most_common(1)[0][0] if cases else None,
            "length_bucket": buckets.most_common(1)[0][0] if buckets else None}


def style_rows(predictions: Sequence[dict], profiles: dict[str, Sequence[dict]], output_field: str = "title"
               ) -> list[dict]:
    """Per prediction: prefix_match (answer's area prefix == gold's, both possibly none), gold_has_prefix,
    case_match and length_match (answer vs the user's habit in the question's profile; None when the profile
    shows no habit). `profiles` maps a question id to its profile entries."""
    out = []
    for row in predictions:
        if row["id"] not in profiles:
            raise PrlmError(f"prediction '{row['id']}' has no question in the dataset given; use the same split")
        answer, gold = row.get("answer") or "", row.get("gold") or ""
        habit = user_habit([str(e[output_field]) for e in profiles[row["id"]]])
        case = first_letter_case(answer)
        out.append({
            "id": row["id"], "user_id": row.get("user_id"),
            "prefix_match": float(area_prefix(answer) == area_prefix(gold)),
            "gold_has_prefix": bool(area_prefix(gold)),
            "case_match": None if habit["case"] is None else float(case == habit["case"]),
            "length_match": None if habit["length_bucket"] is None else
            float(length_bucket(answer) == habit["length_bucket"]),
        })
    return out


def style_summary(rows: Sequence[dict]) -> dict:
    """Means of the style flags: prefix_match overall and where the gold has a prefix, case_match, length_match."""
    def mean(values):
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 4) if values else None

    return {"n": len(rows), "prefix_match": mean(r["prefix_match"] for r in rows),
            "prefix_match_gold_has_prefix": mean(r["prefix_match"] for r in rows if r["gold_has_prefix"]),
            "case_match": mean(r["case_match"] for r in rows), "length_match": mean(r["length_match"] for r in rows)}


def judge_rows(model, predictions: Sequence[dict], questions: dict, k: int | None = None,
               batch_size: int = 32) -> list[dict]:
    """Per prediction: the judge's raw score of (profile context, input, answer) and its sigmoid; a degenerate
    answer (empty, no letters, template parroting) gets score None and reward 0.0.

    `model` is a loaded :class:`prlm.reward.model.RewardModel` (trained with ``--role judge``); `questions` maps
    a question id to its :class:`prlm.data.Example`; `k` past outputs form the context (default: the model's).
    """
    from prlm.data.tasks import get_task
    from prlm.retrieval import BM25Retriever
    from prlm.reward.personalization import degenerate_reason
    from prlm.reward.style_pairs import past_outputs_context

    if model.config.get("role") not in (None, "judge"):
        raise PrlmError(f"this checkpoint was trained as a '{model.config.get('role')}' model; the judge must be "
                        "trained with --role judge, on users the reward model never saw")
    task = get_task(model.config.get("task") or "commit-subject")
    k = model.context_entries if k is None else k
    retriever = BM25Retriever(task)
    keep, inputs, answers, contexts = [], [], [], []
    for i, row in enumerate(predictions):
        ex = questions.get(row["id"])
        if ex is None:
            raise PrlmError(f"prediction '{row['id']}' has no question in the dataset given; use the same split")
        answer = row.get("answer") or ""
        if degenerate_reason(answer):
            continue
        keep.append(i)
        inputs.append(ex.input)
        answers.append(answer)
        contexts.append(past_outputs_context(retriever, task, ex.input, ex.profile, k))
    scores = model.score(inputs, answers, contexts if model.context_entries else None, batch_size) if keep else []
    raw: list = [None] * len(predictions)
    for i, s in zip(keep, scores):
        raw[i] = float(s)
    return [{"id": row["id"], "user_id": row.get("user_id"), "judge_score": s,
             "judge_reward": 0.0 if s is None else 1 / (1 + math.exp(-s))} for row, s in zip(predictions, raw)]


def _run_and_questions(run_dir: str, data: str, task: str):
    from prlm.data import load_split
    from prlm.evaluation import load_run

    summary, predictions = load_run(run_dir)
    split = summary.get("split") or summary.get("config", {}).get("split")
    if not split:
        raise PrlmError(f"run '{run_dir}' does not say its split (summary.json 'split')")
    questions = {ex.id: ex for ex in load_split(data, split, task).examples}
    return predictions, questions


def style_run(run_dir: str, data: str, task: str = "commit-subject") -> tuple[list[dict], dict]:
    """(per-question style flags, their summary) of an evaluation run folder; questions from `data`."""
    predictions, questions = _run_and_questions(run_dir, data, task)
    rows = style_rows(predictions, {qid: ex.profile for qid, ex in questions.items()})
    return rows, style_summary(rows)


def judge_run(model_path: str, run_dir: str, data: str, task: str = "commit-subject", device: str = "cpu",
              batch_size: int = 32) -> list[dict]:
    """Judge scores of every answer of an evaluation run folder; questions from `data`."""
    from prlm.reward.model import load_reward_model

    predictions, questions = _run_and_questions(run_dir, data, task)
    return judge_rows(load_reward_model(model_path, device=device), predictions, questions, batch_size=batch_size)
