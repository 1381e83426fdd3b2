"""Pairs that teach a user's style rather than a form, made from real outputs only (no generation).

Kinds (the names ``prlm rm eval`` reports under):

* ``own-vs-other-user``: the user's real output (chosen) against another
  user's real output for the BM25-nearest input (rejected): the hard negative
  is on the same topic, so only style tells them apart;
* ``preamble``: the real output against itself behind a generic preamble
  ("The subject line is: ...");
* ``sign-off``: the real output against itself followed by a generic sign-off;
* ``casing``: the real output against itself with the first letter's case flipped;
* ``input-copy``: the real output against the first line of the input's text
  (cut at 12 words), the untrained policy's commonest non-answer: a reward
  model trained without this kind prefers such copies to real subjects about
  half the time (issue 14's own-vs-no-profile measurement).

Each pair carries ``context``: the user's own past outputs (the ``title`` of
the top-``k`` profile entries by BM25 against the input), the compact profile
summary a context reward model reads next to the input.

Own outputs come from the split's questions (input, gold) and, with
``source: questions+profiles``, from every profile entry of those questions
(body as input, subject as output): each git author has up to 48 past commits,
so training needs no generation at all. For an entry the context is drawn from
the user's other entries (the same subject excluded, so the answer is never in
its own context).

Preambles and sign-offs come in two disjoint lists: ``variant: train`` draws
from one, ``variant: eval`` from the other, so the measured insensitivity to
form is on wordings the model never saw.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prlm import PrlmError
from prlm.io import atomic_write_json, atomic_write_text
from prlm.options import check_choice, opt
from prlm.reward.users import GROUPS, UserPartition

STYLE_KINDS = ("own-vs-other-user", "preamble", "sign-off", "casing", "input-copy")
SOURCES = ("questions", "questions+profiles")
VARIANTS = ("train", "eval")
NEGATIVE_POOLS = ("same-group", "any")

# {name} is the task's output name ("subject line", "headline").
PREAMBLES = {
    "train": ("Here is the {name}: ", "{Name}: ", "Sure, here it is: ", "Answer: ", "Output: ",
              "Suggested {name}: ", "A good {name} would be: "),
    "eval": ("The {name} is: ", "The {name} for this text is: ", "Here's a concise {name}: ", "Sure! ",
             "The {name} for this commit is: "),
}
SIGN_OFFS = {
    "train": (" Hope this helps!", "\nLet me know if you need anything else.", " (generated)", " Thanks!",
              "\n\nI can suggest alternatives if needed."),
    "eval": (" I hope this helps.", "\n\nFeel free to ask for changes.", " Let me know if you'd like another version.",
             " Best regards."),
}


@dataclass
class StylePairsConfig:
    task: str = opt("commit-subject", "Task name (its input prefix and profile fields).")
    data: str = opt("", "Dataset folder in LaMP's schema.")
    split: str = opt("train", "Split whose questions (and their profiles) give the own outputs.")
    kinds: str = opt("own-vs-other-user,preamble,sign-off,casing",
                     "Pair kinds, comma separated: " + ", ".join(STYLE_KINDS) + ".")
    source: str = opt("questions", "'questions': the split's questions and golds; 'questions+profiles': also every "
                      "profile entry of those questions (for training; never on a split you report).")
    k: int = opt(8, "Past outputs of the user (profile titles, BM25 top-k against the input) kept as 'context'.")
    max_per_user: int = opt(0, "At most this many own outputs per user (0 = all); the questions come first.")
    users: str = opt("all", "Users whose outputs make pairs: 'all' or one group of the user partition "
                     "(rm-train, validation, held-out), comma separated.")
    negatives: str = opt("same-group", "Where the other user's output comes from: 'same-group' (users of the same "
                         "partition group: no text crosses groups, for training files) or 'any'.")
    variant: str = opt("train", "Which list of preambles and sign-offs: 'train' or 'eval' (disjoint lists).")
    max_input_chars: int = opt(1200, "Profile bodies are cut at this many characters (as the questions' inputs are).")
    seed: int = opt(0, "Seed for picking preambles, sign-offs and the per-user subset.")
    out: str = opt("", "JSONL file to write (a sidecar <out>.meta.json keeps provenance and counts).")

    def __post_init__(self):
        if not self.data:
            raise PrlmError("data is required: pass --data FOLDER")
        if not self.out:
            raise PrlmError("out is required: pass --out FILE.jsonl")
        if not self.kind_list:
            raise PrlmError(f"kinds is empty; use one or more of: {', '.join(STYLE_KINDS)}")
        for kind in self.kind_list:
            check_choice("kinds", kind, STYLE_KINDS)
        check_choice("source", self.source, SOURCES)
        check_choice("variant", self.variant, VARIANTS)
        check_choice("negatives", self.negatives, NEGATIVE_POOLS)
        if self.users != "all":
            for group in self.user_groups:
                check_choice("users", group, GROUPS)
        if self.k < 0 or self.max_per_user < 0:
            raise PrlmError("k and max_per_user must be >= 0")

    @property
    def kind_list(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]

    @property
    def user_groups(self) -> list[str]:
        return [g.strip() for g in self.users.split(",") if g.strip()]


@dataclass
class OwnOutput:
    """One real output of a user: the input it answers, the output, and the entries that may form its context."""
    id: str
    user_id: str
    input: str
    output: str
    profile: list[dict]


# --- form perturbations ------------------------------------------------------

def _pick(options: Sequence[str], key: str, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def with_preamble(output: str, output_name: str, key: str, variant: str = "eval", seed: int = 0) -> str:
    template = _pick(PREAMBLES[variant], f"preamble|{key}", seed)
    return template.format(name=output_name, Name=output_name[:1].upper() + output_name[1:]) + output


def with_sign_off(output: str, key: str, variant: str = "eval", seed: int = 0) -> str:
    return output + _pick(SIGN_OFFS[variant], f"sign-off|{key}", seed)


INPUT_COPY_WORDS = 12


def input_copy(task, text: str, words: int = INPUT_COPY_WORDS) -> str:
    """The first non-empty line of an input's text (its query part), cut at `words` words."""
    line = next((ln.strip() for ln in task.query(text).splitlines() if ln.strip()), "")
    return " ".join(line.split()[:words])


def flip_first_letter(output: str) -> str:
    """The output with its first character's case flipped ('' when it does not start with a cased letter)."""
    if not output or output[0].lower() == output[0].upper():
        return ""
    first = output[0]
    return (first.lower() if first.isupper() else first.upper()) + output[1:]


# --- own outputs and their context -------------------------------------------

def own_outputs(task, examples: Sequence, source: str, max_input_chars: int = 1200) -> list[OwnOutput]:
    """Every real output of the questions (and, with 'questions+profiles', of their profile entries), one per
    distinct (user, output); a profile entry's candidate context is the user's entries with another output."""
    by_user: dict[str, dict[str, dict]] = {}
    for ex in examples:
        pool = by_user.setdefault(ex.user_id, {})
        for entry in ex.profile:
            pool.setdefault(entry["id"], entry)
    outputs, seen = [], set()
    for ex in examples:
        key = (ex.user_id, _norm(ex.gold or ""))
        if ex.gold and key not in seen:
            seen.add(key)
            outputs.append(OwnOutput(ex.id, ex.user_id, ex.input, ex.gold, list(ex.profile)))
    if source == "questions+profiles":
        for user, pool in by_user.items():
            entries = list(pool.values())
            for entry in entries:
                title = entry[task.output_field]
                key = (user, _norm(title))
                if not title.strip() or key in seen:
                    continue
                seen.add(key)
                others = [e for e in entries if _norm(e[task.output_field]) != _norm(title)]
                body = str(entry[task.long_field])[:max_input_chars]
                outputs.append(OwnOutput(f"{user}/profile/{entry['id']}", user, task.input_prefix + body, title,
                                         others))
    return outputs


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def past_outputs_context(retriever, task, text: str, profile: Sequence[dict], k: int) -> list[str]:
    """The user's own past outputs for a context: the output field of the top-k entries by BM25 against `text`."""
    if k == 0 or not profile:
        return []
    entries, _ = retriever(text, profile, k)
    return [str(e[task.output_field]) for e in entries]


def nearest_other_outputs(task, outputs: Sequence[OwnOutput], group_of) -> dict[str, OwnOutput]:
    """For each own output, the output of another user whose input is BM25-nearest, among users with the same
    `group_of(user_id)` value (use a constant function for 'any')."""
    from prlm.retrieval import BM25Retriever

    retriever = BM25Retriever(task, max_profiles=8)
    groups: dict = {}
    for item in outputs:
        groups.setdefault(group_of(item.user_id), []).append(item)
    nearest = {}
    for members in groups.values():
        # Inputs as pseudo entries: the query text in the long field, the output field left empty (not matched).
        pool = [{**{f: "" for f in task.entry_fields}, task.long_field: task.query(m.input), "id": str(i)}
                for i, m in enumerate(members)]
        users = [m.user_id for m in members]
        for item in members:
            scores = retriever.scores(item.input, pool).copy()
            for i, user in enumerate(users):
                if user == item.user_id or _norm(members[i].output) == _norm(item.output):
                    scores[i] = float("-inf")
            if len(scores) and scores.max() > float("-inf"):
                nearest[item.id] = members[int(scores.argmax())]
    return nearest


def _subset_per_user(outputs: Sequence[OwnOutput], cap: int, seed: int) -> list[OwnOutput]:
    """At most `cap` outputs per user: the questions' own first, then profile entries in a seeded order."""
    if not cap:
        return list(outputs)
    by_user: dict[str, list[OwnOutput]] = {}
    for item in outputs:
        by_user.setdefault(item.user_id, []).append(item)
    kept = []
    for items in by_user.values():
        questions = [i for i in items if "/profile/" not in i.id]
        entries = sorted((i for i in items if "/profile/" in i.id),
                         key=lambda i: hashlib.sha256(f"{seed}|{i.id}".encode()).hexdigest())
        kept.extend((questions + entries)[:cap])
    return kept


# --- building ----------------------------------------------------------------

def build_style_pairs(cfg: StylePairsConfig, partition: UserPartition | None = None) -> dict:
    """Write the pairs file of `cfg`; returns a summary (also in the sidecar <out>.meta.json)."""
    from prlm.data import get_task, load_split
    from prlm.retrieval import BM25Retriever
    from prlm.reward.pairs import meta_path

    started = time.time()
    partition = partition or UserPartition()
    task = get_task(cfg.task)
    dataset = load_split(cfg.data, cfg.split, task, require_golds=True)
    examples = [ex for ex in dataset.examples
                if cfg.users == "all" or partition.group(ex.user_id) in cfg.user_groups]
    if not examples:
        raise PrlmError(f"no question of split '{cfg.split}' in '{cfg.data}' belongs to users '{cfg.users}'")
    outputs = _subset_per_user(own_outputs(task, examples, cfg.source, cfg.max_input_chars), cfg.max_per_user,
                               cfg.seed)
    kinds = cfg.kind_list
    group_of = partition.group if cfg.negatives == "same-group" else (lambda _user: "any")
    nearest = nearest_other_outputs(task, outputs, group_of) if "own-vs-other-user" in kinds else {}
    retriever = BM25Retriever(task)
    rows, skipped = [], {}
    provenance = {"task": task.name, "split": cfg.split, "source": cfg.source, "variant": cfg.variant,
                  "seed": cfg.seed}
    for item in outputs:
        context = past_outputs_context(retriever, task, item.input, item.profile, cfg.k)
        base = {"id": item.id, "user_id": item.user_id, "input": item.input, "context": context,
                "group": partition.group(item.user_id)}
        for kind in kinds:
            extra = {}
            if kind == "own-vs-other-user":
                other = nearest.get(item.id)
                rejected = other.output if other else ""
                if other:
                    extra = {"other_id": other.id, "other_user_id": other.user_id}
            elif kind == "preamble":
                rejected = with_preamble(item.output, task.output_name, item.id, cfg.variant, cfg.seed)
            elif kind == "sign-off":
                rejected = with_sign_off(item.output, item.id, cfg.variant, cfg.seed)
            elif kind == "casing":
                rejected = flip_first_letter(item.output)
            else:
                rejected = input_copy(task, item.input)
            if not rejected.strip() or rejected.strip() == item.output.strip():
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            rows.append({"pair_id": f"{item.id}:{kind}", **base, "kind": kind, "chosen": item.output,
                         "rejected": rejected, **extra, **provenance})
    atomic_write_text(cfg.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {"out": str(cfg.out), "pairs": len(rows), "own_outputs": len(outputs),
               "users": len({o.user_id for o in outputs}),
               "by_kind": {k: sum(r["kind"] == k for r in rows) for k in kinds}, "skipped": skipped,
               "partition": partition.as_dict(), "wall_time_s": round(time.time() - started, 1)}
    atomic_write_json(meta_path(cfg.out), {"provenance": {**cfg.__dict__}, "summary": summary})
    return summary


def pairs_from_runs(with_profile_run: str, without_profile_run: str, data: str, out: str | Path, k: int = 8,
                    task: str = "commit-subject") -> dict:
    """The paper's pairs without generating: the answers of an evaluation run with the profile (chosen) against
    those of a run without it (rejected), per question; inputs and profiles (for `context`, built as in
    :func:`build_style_pairs`) are read from the dataset folder `data`.

    `with_profile_run` 'gold' takes the user's real output as the chosen side instead: the pairs are then
    ``own-vs-no-profile`` (the real output against the policy's no-profile answer)."""
    from prlm.data import get_task, load_split
    from prlm.evaluation import load_run
    from prlm.retrieval import BM25Retriever

    task_obj = get_task(task)
    s_without, without_rows = load_run(without_profile_run)
    split = s_without.get("split")
    kind = "with-vs-without-profile"
    if with_profile_run == "gold":
        kind = "own-vs-no-profile"
        examples = load_split(data, split, task_obj, require_golds=True).examples
        with_rows = [{"id": ex.id, "user_id": ex.user_id, "answer": ex.gold} for ex in examples]
    else:
        s_with, with_rows = load_run(with_profile_run)
        if split != s_with.get("split"):
            raise PrlmError(f"the two runs are on different splits ({s_with.get('split')} and {split})")
    without = {r["id"]: r for r in without_rows}
    questions = {ex.id: ex for ex in load_split(data, split, task_obj).examples}
    retriever = BM25Retriever(task_obj)
    rows, dropped = [], 0
    for r in with_rows:
        ex = questions.get(r["id"])
        if ex is None:
            raise PrlmError(f"run '{with_profile_run}' has question '{r['id']}', not in split '{split}' of '{data}'")
        chosen = (r.get("answer") or "").strip()
        rejected = ((without.get(r["id"]) or {}).get("answer") or "").strip()
        if not chosen or not rejected or chosen == rejected:
            dropped += 1
            continue
        rows.append({"pair_id": f"{ex.id}:{kind}", "id": ex.id, "user_id": ex.user_id,
                     "input": ex.input, "context": past_outputs_context(retriever, task_obj, ex.input, ex.profile, k),
                     "kind": kind, "chosen": chosen, "rejected": rejected, "split": split})
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"pairs": len(rows), "dropped": dropped, "split": split, "kind": kind}


def reward_contexts(task_name: str, inputs: Sequence[str], profiles: Sequence[Sequence[dict]], k: int
                    ) -> list[list[str]]:
    """The 'context' column a context reward model needs at GRPO time, built exactly as for its training pairs:
    per question, the user's past outputs of the top-k profile entries by BM25 against the input."""
    from prlm.data import get_task
    from prlm.retrieval import BM25Retriever

    task = get_task(task_name)
    retriever = BM25Retriever(task)
    return [past_outputs_context(retriever, task, text, profile, k) for text, profile in zip(inputs, profiles)]
