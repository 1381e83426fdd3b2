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
folder (or a committed record folder) and a dataset folder.

* :func:`judge_compare` (``prlm rm judge-compare``): two evaluations of the
  same questions, A and B (e.g. GRPO with w_pers = 0 and w_pers > 0), on the
  questions of users the judge neither trained on nor chose its epoch with:
  per measure the means, B - A and its 95% paired bootstrap interval, and the
  per-question values they come from, in one JSON file that ``prlm report``
  tables.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prlm import PrlmError
from prlm.options import opt

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
    from prlm.reward.degenerate import degenerate_reason
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


def read_evaluation(path: str | Path) -> tuple[dict, list[dict]]:
    """(facts, predictions) of a run folder of `prlm eval` or of a committed record folder
    (results/DATA/SPLIT/METHOD/, the run's compact copy). facts: split, name (the record's method, else the run's
    name or folder name), data (the record's dataset name, else None) and w_pers (the training recipe's, when the
    record kept it). Each prediction has its per-question metrics at the top, as a record keeps them (a run folder
    nests them under 'metrics')."""
    from prlm.evaluation import is_record, load_run, read_record

    if is_record(path):
        summary, rows = read_record(path)
        facts = {"split": summary.get("split"), "name": summary.get("method"), "data": summary.get("data")}
    else:
        summary, rows = load_run(path)
        rows = [{**{k: v for k, v in r.items() if k != "metrics"}, **(r.get("metrics") or {})} for r in rows]
        facts = {"split": summary.get("split") or summary.get("config", {}).get("split"),
                 "name": summary.get("name") or Path(path).resolve().name, "data": None}
    if not facts["split"]:
        raise PrlmError(f"run '{path}' does not say its split (summary.json 'split')")
    facts["w_pers"] = (summary.get("training") or {}).get("w_pers")
    return facts, rows


def _run_and_questions(run_dir: str, data: str, task: str):
    from prlm.data import load_split

    facts, predictions = read_evaluation(run_dir)
    questions = {ex.id: ex for ex in load_split(data, facts["split"], task).examples}
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


# --- two evaluations compared: A (e.g. w_pers = 0) against B (w_pers > 0) ------------------------

JUDGE_COMPARE_FORMAT = "prlm-judge-compare"
# (key, what it is): the measures of a comparison, in the order files and tables list them.
COMPARE_MEASURES = (
    ("judge_reward", "judge reward (sigmoid of the score, 0 for a degenerate answer)"),
    ("judge_score", "judge raw score (non-degenerate answers of both sides)"),
    ("rougeL", "ROUGE-L (the runs' own per-question scores)"),
    ("prefix_match", "area prefix equals the gold's (both none counts)"),
    ("prefix_match_gold_has_prefix", "area prefix equals the gold's, where the gold has one"),
    ("case_match", "first-letter casing matches the user's habit"),
    ("length_match", "length bucket matches the user's habit"),
)


@dataclass
class JudgeCompareConfig:
    a: str = opt("", "Evaluation A (the baseline, e.g. GRPO with w_pers 0): a run folder of `prlm eval` or a "
                 "committed record folder results/DATA/SPLIT/METHOD/.")
    b: str = opt("", "Evaluation B of the same questions (e.g. the same recipe with w_pers > 0): run or record "
                 "folder.")
    model: str = opt("", "Judge checkpoint (`prlm rm train --role judge`, trained on users disjoint from the reward "
                     "model's).")
    data: str = opt("", "Dataset folder of the evaluations (inputs and profiles).")
    out: str = opt("", "JSON file to write, e.g. results/reward-model/judge-compare.DATA.SPLIT.B-vs-A.json "
                   "(`prlm report` tables every such file there).")
    task: str = opt("commit-subject", "Task name.")
    a_name: str = opt("", "Name of A in the file (default: the record's method, else the run's name).")
    b_name: str = opt("", "Name of B in the file (default: the record's method, else the run's name).")
    data_name: str = opt("", "Dataset name in the file (default: the record's, else the data folder's name).")
    judge_name: str = opt("", "Judge name in the file (default: the checkpoint folder's name).")
    device: str = opt("cpu", "Device for the judge.")
    batch_size: int = opt(32, "Answers per judge scoring batch.")
    samples: int = opt(10_000, "Paired bootstrap resamples of the questions (the report's BOOTSTRAP_SAMPLES).")
    seed: int = opt(0, "Bootstrap seed (the report's comparisons use 0).")

    def __post_init__(self):
        for name, hint in (("a", "--a RUN_OR_RECORD"), ("b", "--b RUN_OR_RECORD"), ("model", "--model JUDGE"),
                           ("data", "--data DATASET_FOLDER"), ("out", "--out FILE.json")):
            if not getattr(self, name):
                raise PrlmError(f"{name} is required: pass {hint}")
        if self.batch_size < 1 or self.samples < 1:
            raise PrlmError(f"batch_size and samples must be at least 1, got {self.batch_size} and {self.samples}")


def _side_values(prediction: dict, judged: dict, style: dict) -> dict:
    """One answer's value of every measure (None where it is not defined)."""
    if not isinstance(prediction.get("rougeL"), (int, float)):
        raise PrlmError(f"prediction '{prediction['id']}' has no per-question rougeL; compare evaluations of "
                        "`prlm eval` (run folders) or their records")
    values = {"judge_reward": judged["judge_reward"], "judge_score": judged["judge_score"],
              "rougeL": prediction["rougeL"], "prefix_match": style["prefix_match"],
              "prefix_match_gold_has_prefix": style["prefix_match"] if style["gold_has_prefix"] else None,
              "case_match": style["case_match"], "length_match": style["length_match"]}
    return {k: None if v is None else round(float(v), 6) for k, v in values.items()}


def compare_measures(per_question: Sequence[dict], samples: int, seed: int = 0) -> list[dict]:
    """Per measure: mean of A, mean of B, B - A and its 95% paired bootstrap interval over the questions where
    both sides have a value (so each measure has its own n)."""
    from prlm.evaluation import paired_bootstrap

    rows = []
    for measure, _ in COMPARE_MEASURES:
        pairs = [(q["a"][measure], q["b"][measure]) for q in per_question
                 if q["a"][measure] is not None and q["b"][measure] is not None]
        row = {"measure": measure, "n": len(pairs), "a_mean": None, "b_mean": None, "diff": None, "lo": None,
               "hi": None}
        if pairs:
            result = paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs], metric=measure,
                                      samples=samples, seed=seed)
            row.update({key: round(value, 4) + 0.0 for key, value in  # + 0.0: no '-0.0' for a tiny negative
                        (("a_mean", result.mean_a), ("b_mean", result.mean_b), ("diff", result.diff),
                         ("lo", result.low), ("hi", result.high))})
        rows.append(row)
    return rows


def _same_questions(cfg: JudgeCompareConfig, facts_a: dict, rows_a: list, facts_b: dict, rows_b: list) -> list[str]:
    if facts_a["split"] != facts_b["split"]:
        raise PrlmError(f"A is on split '{facts_a['split']}' and B on '{facts_b['split']}'; compare evaluations "
                        "of the same questions")
    ids_a, ids_b = [r["id"] for r in rows_a], [r["id"] for r in rows_b]
    if set(ids_a) != set(ids_b) or len(ids_a) != len(set(ids_a)):
        raise PrlmError(f"'{cfg.a}' and '{cfg.b}' cover different questions ({len(set(ids_a))} and "
                        f"{len(set(ids_b))} ids, {len(set(ids_a) & set(ids_b))} shared); evaluate both on the "
                        "whole split")
    return sorted(ids_a)


def judge_compare(cfg: JudgeCompareConfig, command: str = "") -> dict:
    """`prlm rm judge-compare`: A and B judged and style-measured on the questions of users the judge never saw
    (neither trained on nor chose its epoch with); written to `cfg.out` and returned."""
    from prlm.data import load_split
    from prlm.io import atomic_write_json
    from prlm.reward.model import load_reward_model, seen_users

    (facts_a, rows_a), (facts_b, rows_b) = read_evaluation(cfg.a), read_evaluation(cfg.b)
    ids = _same_questions(cfg, facts_a, rows_a, facts_b, rows_b)
    questions = {ex.id: ex for ex in load_split(cfg.data, facts_a["split"], cfg.task).examples}
    missing = [i for i in ids if i not in questions]
    if missing:
        raise PrlmError(f"question '{missing[0]}' (and {len(missing) - 1} more) is not in {cfg.data} "
                        f"{facts_a['split']}; pass the evaluations' dataset folder")
    judge = load_reward_model(cfg.model, device=cfg.device)
    # The judge is meant to score users it was not fitted to: drop every question of a user it trained on or
    # chose its epoch with (its checkpoint lists them), so a high judge score is not its memory of the user.
    seen = seen_users(judge.config)
    kept = [i for i in ids if str(questions[i].user_id) not in seen]
    if not kept:
        raise PrlmError("every question belongs to a user the judge trained on or chose its epoch with; compare "
                        "on other users (the judge is reported on the reward model's training users)")
    by_a, by_b = {r["id"]: r for r in rows_a}, {r["id"]: r for r in rows_b}
    preds_a, preds_b = [by_a[i] for i in kept], [by_b[i] for i in kept]
    judged = judge_rows(judge, preds_a + preds_b, questions, batch_size=cfg.batch_size)  # one batched pass
    profiles = {i: questions[i].profile for i in kept}
    style_a, style_b = style_rows(preds_a, profiles), style_rows(preds_b, profiles)
    per_question = [{"id": i, "user_id": str(questions[i].user_id),
                     "a": _side_values(preds_a[j], judged[j], style_a[j]),
                     "b": _side_values(preds_b[j], judged[len(kept) + j], style_b[j])} for j, i in enumerate(kept)]
    dropped = [i for i in ids if i not in set(kept)]
    result = {
        "format": JUDGE_COMPARE_FORMAT, "command": command,
        "data": cfg.data_name or facts_b["data"] or facts_a["data"] or Path(cfg.data).resolve().name,
        "split": facts_a["split"], "a": cfg.a_name or facts_a["name"], "b": cfg.b_name or facts_b["name"],
        "a_source": str(cfg.a), "b_source": str(cfg.b), "a_w_pers": facts_a["w_pers"], "b_w_pers": facts_b["w_pers"],
        "judge": cfg.judge_name or Path(cfg.model).resolve().name, "judge_role": judge.config.get("role"),
        "n": len(kept), "users": len({q["user_id"] for q in per_question}), "questions": len(ids),
        "dropped": {"questions": len(dropped), "users": len({str(questions[i].user_id) for i in dropped}),
                    "why": "users the judge trained on or chose its epoch with"},
        "samples": cfg.samples, "seed": cfg.seed, "what": dict(COMPARE_MEASURES),
        "measures": compare_measures(per_question, cfg.samples, cfg.seed), "per_question": per_question,
    }
    atomic_write_json(cfg.out, result)
    return result
