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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prlm import PrlmError
from prlm.data.tasks import Task
from prlm.generation import GenerationConfig
from prlm.io import atomic_write_json, atomic_write_text
from prlm.options import check_choice, opt
from prlm.retrieval import ProfileDataConfig

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
    chunk_size: int = opt(64, "Questions per chunk; each finished chunk is saved, so an interrupted run resumes "
                              "there.")
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


def build_pairs(cfg: PairsConfig, progress: bool = True, generator=None, tokenizer=None, retriever=None) -> dict:
    """Write (or resume) the pairs file of `cfg`; returns a summary dict (also in the sidecar).

    `retriever` may be passed to reuse retrievals computed once (e.g. a `RankedRetriever`)."""
    from prlm.data import get_task
    from prlm.generation import make_generator
    from prlm.retrieval import make_retriever, retrieve_each

    started = time.time()
    task = get_task(cfg.task)
    examples = _questions(cfg, task)
    file = _PairsFile(cfg, *_load_existing(cfg))
    todo = [ex for ex in examples if ex.id not in file.questions_done()]
    reused = _reused_no_profile(cfg, todo)
    if retriever is None:
        retriever = make_retriever(cfg.retriever, task, seed=cfg.seed, encoder=cfg.encoder)
    hits = [entries for entries, _ in retrieve_each(retriever, todo, cfg.k)]
    nearest = nearest_other_user(task, examples, todo) if "gold-vs-other-user" in cfg.kind_list else {}
    if todo and _generates(cfg) and generator is None:
        generator, tokenizer = make_generator(cfg.model, cfg.backend, cfg.device, cfg.batch_size)
    policy = _Policy(cfg, task, generator, tokenizer, reused, progress)
    provenance = {"task": task.name, "split": cfg.split, "retriever": cfg.retriever, "k": cfg.k,
                  "model": reused.model, "seed": cfg.seed}
    file.save_meta()
    written = 0
    for start in range(0, len(todo), cfg.chunk_size):
        chunk, chunk_hits = todo[start:start + cfg.chunk_size], hits[start:start + cfg.chunk_size]
        sides = policy.answer(chunk, chunk_hits, desc=f"pairs {start + len(chunk)}/{len(todo)}")
        new_rows = []
        for ex, side in zip(chunk, sides):
            new_rows += _question_pairs(cfg, task, ex, side, nearest.get(ex.id), provenance, file.dropped)
        file.append(new_rows)
        written += len(new_rows)
    return file.finish(_summary(cfg, file, written, len(todo), len(examples), started))


def _questions(cfg: PairsConfig, task: Task) -> list:
    from prlm.data import load_split

    needs_gold = any(k.startswith("gold-") for k in cfg.kind_list)
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None,
                         allow_empty_profiles=cfg.allow_empty_profiles, require_golds=needs_gold)
    if not dataset.examples:
        raise PrlmError(f"split '{cfg.split}' of '{cfg.data}' has no questions")
    return dataset.examples


class _PairsFile:
    """The pairs file and its sidecar while they are written: each chunk is appended by an atomic
    rewrite of the file, then the sidecar (provenance, dropped pairs) is rewritten."""

    def __init__(self, cfg: PairsConfig, text: str, rows: list[dict], meta: dict):
        self.cfg, self.text, self.rows = cfg, text, rows
        self.dropped: dict[str, str] = dict(meta.get("dropped", {}))
        self.meta = {"provenance": cfg.provenance(), "dropped": self.dropped, "started": meta.get("started") or
                     datetime.now(UTC).isoformat(timespec="seconds")}

    def questions_done(self) -> set[str]:
        """Questions already in the file or whose pairs were all dropped."""
        return {r["id"] for r in self.rows} | {pid.rsplit(":", 1)[0] for pid in self.dropped}

    def save_meta(self, **extra) -> None:
        atomic_write_json(meta_path(self.cfg.out), {**self.meta, "pairs": len(self.rows), **extra})

    def append(self, new_rows: list[dict]) -> None:
        import json

        self.text += "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new_rows)
        atomic_write_text(self.cfg.out, self.text)
        self.rows.extend(new_rows)
        self.save_meta()

    def finish(self, summary: dict) -> dict:
        if not Path(self.cfg.out).exists():
            atomic_write_text(self.cfg.out, self.text)
        self.save_meta(summary=summary)
        return summary


@dataclass
class _Reused:
    """No-profile answers taken from an earlier evaluation run (`no_profile_run`): id -> (answer, completion)."""
    answers: dict
    model: str


def _reused_no_profile(cfg: PairsConfig, todo: Sequence) -> _Reused:
    if not cfg.no_profile_run:
        return _Reused({}, cfg.model)
    answers, model = _no_profile_answers(cfg.no_profile_run, cfg.split)
    missing = [ex.id for ex in todo if ex.id not in answers]
    if missing:
        raise PrlmError(f"run '{cfg.no_profile_run}' has no answer for {len(missing)} question(s) "
                        f"(e.g. '{missing[0]}'); evaluate it on the same split without --limit")
    return _Reused(answers, model or cfg.model)


def _generates(cfg: PairsConfig) -> bool:
    """Whether the policy writes answers: the rag side, or the no-profile side when no run gives it."""
    kinds = cfg.kind_list
    return "rag-vs-no-profile" in kinds or ("gold-vs-no-profile" in kinds and not cfg.no_profile_run)


@dataclass
class _Sides:
    """One question's retrieved entries (those its rag prompt holds) and the policy's answers, with the
    raw completions they were extracted from (None where that side was not needed)."""
    entries: list[dict]
    rag: str | None = None
    rag_completion: str | None = None
    no_profile: str | None = None
    no_profile_completion: str | None = None


@dataclass
class _Policy:
    """The policy's answers of a chunk: its rag and no-profile prompts generated in one call."""
    cfg: PairsConfig
    task: Task
    generator: object
    tokenizer: object
    reused: _Reused
    progress: bool

    def answer(self, chunk: Sequence, hits: Sequence[list[dict]], desc: str) -> list[_Sides]:
        from prlm.prompts import build_prompts

        cfg, kinds = self.cfg, self.cfg.kind_list
        sides = [_Sides(entries) for entries in hits]
        rag_prompts = []
        if "rag-vs-no-profile" in kinds:
            rag_prompts = build_prompts(self.task, chunk, [(e, None) for e in hits], "rag", self.tokenizer,
                                        cfg.max_prompt_tokens)
            for side, prompt in zip(sides, rag_prompts):
                side.entries = side.entries[:prompt.entries_used]
        np_prompts = []
        if _generates(cfg) and not cfg.no_profile_run:
            np_prompts = build_prompts(self.task, chunk, [([], None)] * len(chunk), "no-profile", self.tokenizer,
                                       cfg.max_prompt_tokens)
        raw, answers = self._generate(rag_prompts + np_prompts, desc) if _generates(cfg) else ([], [])
        for side, text, answer in zip(sides, raw, answers[:len(rag_prompts)]):
            side.rag, side.rag_completion = answer, text
        for side, text, answer in zip(sides, raw[len(rag_prompts):], answers[len(rag_prompts):]):
            side.no_profile, side.no_profile_completion = answer, text
        if cfg.no_profile_run:
            for side, ex in zip(sides, chunk):
                side.no_profile, side.no_profile_completion = self.reused.answers[ex.id]
        return sides

    def _generate(self, prompts: list, desc: str) -> tuple[list[str], list[str]]:
        """(raw completions, answers); the raw texts are kept so that answers can be re-extracted later."""
        from prlm.answers import parse_completion
        from prlm.generation import SamplingParams

        cfg = self.cfg
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                seed=cfg.seed)
        completions = self.generator.generate([p.text for p in prompts], params, progress=self.progress, desc=desc)
        raw = [c[0] for c in completions]
        return raw, [parse_completion(text, "rag", self.task).answer for text in raw]


def _question_pairs(cfg: PairsConfig, task: Task, ex, side: _Sides, other, provenance: dict,
                    dropped: dict[str, str]) -> list[dict]:
    """The rows of one question, a row per kind; a pair with nothing to learn from goes to `dropped`."""
    base = {"id": ex.id, "user_id": ex.user_id, "input": ex.input, "retrieved": [e["id"] for e in side.entries],
            "context": [task.render_entry(e) for e in side.entries]}
    rows = []
    for kind in cfg.kind_list:
        chosen, rejected, extra = _pair_sides(kind, ex, side, other)
        pid = f"{ex.id}:{kind}"
        reason = _drop_reason(chosen, rejected)
        if reason:
            dropped[pid] = reason
            continue
        rows.append({"pair_id": pid, **base, "kind": kind, "chosen": chosen, "rejected": rejected,
                     **extra, **provenance})
    return rows


def _pair_sides(kind: str, ex, side: _Sides, other) -> tuple[str, str, dict]:
    """(chosen, rejected, extra fields) of one kind of pair; `other` is the nearest other user's question."""
    if kind == "rag-vs-no-profile":
        return side.rag, side.no_profile, {"chosen_completion": side.rag_completion,
                                           "rejected_completion": side.no_profile_completion}
    if kind == "gold-vs-no-profile":
        return ex.gold or "", side.no_profile, {"rejected_completion": side.no_profile_completion}
    rejected = (other.gold or "") if other else ""
    extra = {"other_id": other.id, "other_user_id": other.user_id} if other is not None else {}
    return ex.gold or "", rejected, extra


def _summary(cfg: PairsConfig, file: _PairsFile, written: int, questions_now: int, questions: int,
             started: float) -> dict:
    reasons: dict[str, int] = {}
    for reason in file.dropped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "out": str(cfg.out), "pairs": len(file.rows), "written_now": written, "questions_now": questions_now,
        "questions_resumed": questions - questions_now, "dropped": len(file.dropped), "dropped_by_reason": reasons,
        "by_kind": {k: sum(r.get("kind") == k for r in file.rows) for k in cfg.kind_list},
        "wall_time_s": round(time.time() - started, 1),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


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
