"""Preference pairs for the personalization reward model, written as resumable JSONL.

Kinds of pair (``PairsConfig.kinds``, comma separated):

* ``rag-vs-no-profile`` (the paper's): for each question the policy answers
  once **with** the retrieved profile entries (the ``rag`` prompt: chosen) and
  once **without** any profile (``no-profile`` prompt: rejected).
* ``gold-vs-no-profile``: the user's real output (chosen) against the policy's
  no-profile answer (rejected).
* ``gold-vs-other-user``: the user's real output (chosen) against another
  user's real output for the most similar input (BM25 over the split's
  inputs, the question's own user excluded) (rejected).

One JSONL row per pair::

    {"pair_id": "q1:rag-vs-no-profile", "id": "q1", "user_id": "u3", "kind": ...,
     "input": <the question's input>, "chosen": ..., "rejected": ...,
     "retrieved": [profile entry ids, most relevant first], "context": [those entries rendered],
     "task", "split", "retriever", "k", "model", "seed"}

(``gold-vs-other-user`` rows add ``other_id`` and ``other_user_id``; a side the
policy generated keeps its raw text in ``chosen_completion`` /
``rejected_completion``, so answers can be re-extracted without generating
again.) A pair
with an empty side, or with both sides equal (nothing to learn from), is not
written; it is counted in the summary and in the sidecar ``<out>.meta.json``.

Resuming: questions are processed in chunks; each finished chunk is appended
to the JSONL by an atomic rewrite, then the sidecar (provenance, dropped
pairs) is rewritten. A restarted run with the same options skips every
question already in the file or in the sidecar's dropped list; a run with
other options refuses to mix its pairs into the file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from prlm import PrlmError
from prlm.generation import GenerationConfig
from prlm.options import check_choice, opt
from prlm.retrieval import ProfileDataConfig
from prlm.data.tasks import Task
from prlm.io import atomic_write_json, atomic_write_text

KINDS = ("rag-vs-no-profile", "gold-vs-no-profile", "gold-vs-other-user")
REQUIRED_FIELDS = ("id", "user_id", "input", "chosen", "rejected")
# Options that change what a pair holds: a resumed run must use the same ones.
PROVENANCE_KEYS = ("task", "data", "split", "retriever", "k", "encoder", "model", "seed", "kinds",
                   "max_prompt_tokens", "max_new_tokens", "temperature", "top_p", "no_profile_run",
                   "limit", "allow_empty_profiles")


@dataclass
class PairsConfig(GenerationConfig, ProfileDataConfig):
    split: str = opt("train", "Split whose questions make the pairs.")
    retriever: str = opt("bm25", "Profile retriever for the chosen (rag) answer: random, recency, bm25, bm25s, dense.")
    kinds: str = opt("rag-vs-no-profile", "Pair kinds, comma separated: rag-vs-no-profile (the paper's), "
                     "gold-vs-no-profile, gold-vs-other-user.")
    chunk_size: int = opt(64, "Questions per chunk; each finished chunk is saved, so an interrupted run resumes there.")
    no_profile_run: str = opt("", "Run folder of `prlm eval --method no-profile` on the same split: reuse its answers "
                              "(column 'answer') instead of generating them.")
    out: str = opt("", "JSONL file to write (a sidecar <out>.meta.json keeps provenance and dropped pairs).")
    overwrite: bool = opt(False, "Start the file afresh instead of resuming it.")

    def __post_init__(self):
        GenerationConfig.__post_init__(self)
        ProfileDataConfig.__post_init__(self)
        for kind in self.kind_list:
            check_choice("kinds", kind, KINDS)
        if not self.kind_list:
            raise PrlmError(f"kinds is empty; use one or more of: {', '.join(KINDS)}")
        if not self.out:
            raise PrlmError("out is required: pass --out FILE.jsonl")
        if "rag-vs-no-profile" in self.kind_list and (self.k == 0 or self.retriever == "none"):
            raise PrlmError("kind rag-vs-no-profile needs profile entries: set k >= 1 and a retriever other than none")
        if self.chunk_size < 1:
            raise PrlmError(f"chunk_size must be at least 1, got {self.chunk_size}")

    @property
    def kind_list(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]

    def provenance(self) -> dict:
        return {key: getattr(self, key) for key in PROVENANCE_KEYS}


def meta_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".meta.json")


# --- reading and validating a pairs file -------------------------------------

def validate_pair(row, where: str) -> dict:
    """Check one row; `where` is 'FILE: line N'."""
    if not isinstance(row, dict):
        raise PrlmError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in REQUIRED_FIELDS:
        if key not in row:
            raise PrlmError(f"{where}: missing field '{key}' (a pair needs {', '.join(REQUIRED_FIELDS)})")
        value = row[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("id", "user_id"):
            row[key] = value = str(value)
        if not isinstance(value, str):
            raise PrlmError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    for key in ("input", "chosen", "rejected"):
        if not row[key].strip():
            raise PrlmError(f"{where}: field '{key}' is empty (pairs with an empty side cannot be trained on)")
    context = row.get("context")
    if context is not None and not (isinstance(context, list) and all(isinstance(c, str) for c in context)):
        raise PrlmError(f"{where}: field 'context' must be a list of strings")
    return row


def read_pairs(path: str | Path) -> list[dict]:
    """All rows of a pairs file, validated; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise PrlmError(f"pairs file '{path}' not found; make one with `prlm rm pairs --out {path}`")
    rows, seen = [], {}
    for number, row in _numbered_rows(path):
        where = f"{path}: line {number}"
        row = validate_pair(row, where)
        pid = row.get("pair_id")
        if pid is not None:
            if pid in seen:
                raise PrlmError(f"{where}: duplicate pair_id '{pid}' (also line {seen[pid]})")
            seen[pid] = number
        rows.append(row)
    if not rows:
        raise PrlmError(f"{path}: no pairs in the file")
    return rows


def _numbered_rows(path: Path):
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PrlmError(f"{path}: not UTF-8 text (invalid byte at offset {err.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise PrlmError(f"{path}: line {number}: not valid JSON ({err.msg})") from None


# --- other users' outputs as negatives ---------------------------------------

def nearest_other_user(task: Task, examples: Sequence, targets: Sequence) -> dict[str, object]:
    """For each target question, the example of another user whose input is BM25-nearest."""
    from prlm.retrieval import make_retriever

    retriever = make_retriever("bm25", task)
    # Inputs as pseudo profile entries: the input's query in the long field, other fields empty.
    pool = [{**{f: "" for f in task.entry_fields}, task.long_field: task.query(ex.input), "id": ex.id}
            for ex in examples]
    by_id = {ex.id: ex for ex in examples}
    nearest = {}
    for ex in targets:
        candidates = [p for p, other in zip(pool, examples) if other.user_id != ex.user_id]
        hits, _ = retriever(ex.input, candidates, 1)
        if hits:
            nearest[ex.id] = by_id[hits[0]["id"]]
    return nearest


def _no_profile_answers(run_dir: str, split: str) -> tuple[dict[str, str], str]:
    from prlm.evaluation import load_run

    summary, rows = load_run(run_dir)
    config = summary.get("config", {})
    if config.get("method") != "no-profile":
        raise PrlmError(f"run '{run_dir}' used method '{config.get('method')}', not no-profile")
    if summary.get("split") != split:
        raise PrlmError(f"run '{run_dir}' is on split '{summary.get('split')}', not '{split}'")
    return {r["id"]: (r.get("answer", ""), r.get("completion")) for r in rows}, config.get("model", "")


# --- building ----------------------------------------------------------------

def _load_existing(cfg: PairsConfig) -> tuple[str, list[dict], dict]:
    """(file text, rows, sidecar) of an existing pairs file, or empty ones."""
    out, meta_file = Path(cfg.out), meta_path(cfg.out)
    if cfg.overwrite or not out.exists():
        return "", [], {}
    if not meta_file.is_file():
        raise PrlmError(f"{out} exists without its sidecar {meta_file.name}, so it cannot be resumed safely; "
                        "pass --overwrite true or another --out")
    import json

    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PrlmError(f"{meta_file}: not valid JSON, so {out} cannot be resumed safely; "
                        "pass --overwrite true or another --out") from None
    old = meta.get("provenance", {}) if isinstance(meta, dict) else {}
    diffs = [f"{key}: {old.get(key)!r} -> {value!r}" for key, value in cfg.provenance().items()
             if old.get(key) != value]
    if diffs:
        raise PrlmError(f"{out} was made with other options ({'; '.join(diffs)}); resume it with the same "
                        "options, or pass --overwrite true or another --out")
    text = out.read_text(encoding="utf-8")
    rows = [validate_pair(row, f"{out}: line {n}") for n, row in _numbered_rows(out)]
    if text and not text.endswith("\n"):
        text += "\n"
    return text, rows, meta


def build_pairs(cfg: PairsConfig, progress: bool = True, generator=None, tokenizer=None) -> dict:
    """Write (or resume) the pairs file of `cfg`; returns a summary dict (also in the sidecar)."""
    import json

    from prlm.data import get_task, load_split
    from prlm.generation import SamplingParams, make_generator
    from prlm.prompts import build_prompt, parse_completion
    from prlm.retrieval import DenseRetriever, make_retriever

    started = time.time()
    kinds = cfg.kind_list
    task = get_task(cfg.task)
    needs_gold = any(k.startswith("gold-") for k in kinds)
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None,
                         allow_empty_profiles=cfg.allow_empty_profiles, require_golds=needs_gold)
    if not dataset.examples:
        raise PrlmError(f"split '{cfg.split}' of '{cfg.data}' has no questions")

    text, rows, meta = _load_existing(cfg)
    dropped: dict[str, str] = dict(meta.get("dropped", {}))
    done = {r["id"] for r in rows} | {pid.rsplit(":", 1)[0] for pid in dropped}
    todo = [ex for ex in dataset.examples if ex.id not in done]

    np_answers, model_name = {}, cfg.model
    if cfg.no_profile_run:
        np_answers, model_name = _no_profile_answers(cfg.no_profile_run, cfg.split)
        missing = [ex.id for ex in todo if ex.id not in np_answers]
        if missing:
            raise PrlmError(f"run '{cfg.no_profile_run}' has no answer for {len(missing)} question(s) "
                            f"(e.g. '{missing[0]}'); evaluate it on the same split without --limit")
        model_name = model_name or cfg.model
    need_rag = "rag-vs-no-profile" in kinds
    need_np = need_rag or "gold-vs-no-profile" in kinds
    need_generation = todo and (need_rag or (need_np and not cfg.no_profile_run))

    retriever = make_retriever(cfg.retriever, task, seed=cfg.seed, encoder=cfg.encoder)
    if isinstance(retriever, DenseRetriever) and todo:
        retriever.prepare([ex.input for ex in todo], [ex.profile for ex in todo])
    nearest = nearest_other_user(task, dataset.examples, todo) if "gold-vs-other-user" in kinds else {}
    if need_generation and generator is None:
        generator, tokenizer = make_generator(cfg.model, cfg.backend, cfg.device, cfg.batch_size)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed)
    provenance = {"task": task.name, "split": cfg.split, "retriever": cfg.retriever, "k": cfg.k,
                  "model": model_name, "seed": cfg.seed}
    meta = {"provenance": cfg.provenance(), "dropped": dropped, "started": meta.get("started") or
            datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def save_meta(**extra) -> None:
        atomic_write_json(meta_path(cfg.out), {**meta, "pairs": len(rows), **extra})

    save_meta()
    written = 0
    for start in range(0, len(todo), cfg.chunk_size):
        chunk = todo[start:start + cfg.chunk_size]
        hits, rag_prompts = [], []
        for ex in chunk:
            entries, _ = retriever(ex.input, ex.profile, cfg.k)
            hits.append(entries)
            if need_rag:
                rag_prompts.append(build_prompt(task, ex.input, entries, "rag", tokenizer, cfg.max_prompt_tokens))
        rag_answers: list[str] = []
        np_chunk: list[str] = []
        raw: list = []  # the generated texts, kept so that answers can be re-extracted later
        if need_rag or (need_np and not cfg.no_profile_run):
            texts = [p.text for p in rag_prompts]
            if not cfg.no_profile_run:
                np_prompts = [build_prompt(task, ex.input, [], "no-profile", tokenizer, cfg.max_prompt_tokens)
                              for ex in chunk]
                texts += [p.text for p in np_prompts]
            completions = generator.generate(texts, params, progress=progress,
                                             desc=f"pairs {start + len(chunk)}/{len(todo)}")
            raw = [c[0] for c in completions]
            answers = [parse_completion(text, "rag", task).answer for text in raw]
            rag_answers = answers[:len(rag_prompts)]
            np_chunk = answers[len(rag_prompts):]
        rag_raw, np_raw = raw[:len(rag_prompts)], raw[len(rag_prompts):]
        if cfg.no_profile_run:
            np_chunk = [np_answers[ex.id][0] for ex in chunk]
            np_raw = [np_answers[ex.id][1] for ex in chunk]

        new_rows = []
        for i, ex in enumerate(chunk):
            used = rag_prompts[i].entries_used if need_rag else len(hits[i])
            entries = hits[i][:used]
            base = {"id": ex.id, "user_id": ex.user_id, "input": ex.input,
                    "retrieved": [e["id"] for e in entries], "context": [task.render_entry(e) for e in entries]}
            for kind in kinds:
                extra = {}
                if kind == "rag-vs-no-profile":
                    chosen, rejected = rag_answers[i], np_chunk[i]
                    extra = {"chosen_completion": rag_raw[i], "rejected_completion": np_raw[i]}
                elif kind == "gold-vs-no-profile":
                    chosen, rejected = ex.gold or "", np_chunk[i]
                    extra = {"rejected_completion": np_raw[i]}
                else:
                    other = nearest.get(ex.id)
                    chosen, rejected = ex.gold or "", (other.gold or "") if other else ""
                    if other is not None:
                        extra = {"other_id": other.id, "other_user_id": other.user_id}
                pid = f"{ex.id}:{kind}"
                reason = _drop_reason(chosen, rejected)
                if reason:
                    dropped[pid] = reason
                    continue
                new_rows.append({"pair_id": pid, **base, "kind": kind, "chosen": chosen, "rejected": rejected,
                                 **extra, **provenance})
        text += "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new_rows)
        atomic_write_text(cfg.out, text)
        rows.extend(new_rows)
        written += len(new_rows)
        save_meta()

    if not Path(cfg.out).exists():
        atomic_write_text(cfg.out, text)
    reasons: dict[str, int] = {}
    for reason in dropped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    summary = {
        "out": str(cfg.out), "pairs": len(rows), "written_now": written, "questions_now": len(todo),
        "questions_resumed": len(dataset.examples) - len(todo), "dropped": len(dropped), "dropped_by_reason": reasons,
        "by_kind": {k: sum(r.get("kind") == k for r in rows) for k in kinds},
        "wall_time_s": round(time.time() - started, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_meta(summary=summary)
    return summary


def _drop_reason(chosen: str, rejected: str) -> str:
    if not chosen.strip() and not rejected.strip():
        return "both sides empty"
    if not chosen.strip():
        return "empty chosen"
    if not rejected.strip():
        return "empty rejected"
    if chosen.strip() == rejected.strip():
        return "identical sides"
    return ""
