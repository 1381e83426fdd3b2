"""The personalization reward model: an encoder over (input, answer) with a scalar head.

* Model: ``AutoModelForSequenceClassification(num_labels=1)`` over the text
  pair ``([user's past outputs ; ...] [SEP] input, answer)`` (the context part
  only with ``context_entries`` > 0); the default backbone is
  the embedded MiniLM (``minilm``), the paper's is ``bert-base-uncased``.
  Segment ids are not used (TRL's preference collator passes only
  ``input_ids`` and ``attention_mask``); scoring encodes exactly as training.
* Training: TRL's ``RewardTrainer`` (the transformers ``Trainer`` with the
  Bradley-Terry loss ``-log sigmoid(s(x, y+) - s(x, y-))``) on pre-tokenized
  ``chosen_ids``/``rejected_ids``. Users are split by a hash of their id
  (:mod:`prlm.reward.users`): the model trains on one group, chooses its epoch
  (pairwise accuracy) on the ``validation`` group, and its reported accuracy
  (``held_out`` in the saved config) is on a third group that did neither; the
  accuracy on the validation pairs is kept as ``selection`` only, since the
  epoch was chosen on it. Pair kinds can be mixed with sampling weights.
* Checkpoint folder: the model, its tokenizer and ``prlm_rm_config.json``
  (backbone, max length, context option, training metrics). Loading checks
  that folder and turns mismatches into one-line :class:`prlm.PrlmError`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from prlm import PrlmError
from prlm.io import atomic_write_json
from prlm.options import check_choice, opt
from prlm.reward.users import ROLES, UserPartition

RM_CONFIG_NAME = "prlm_rm_config.json"
RM_FORMAT = "prlm-reward-model"


@dataclass
class RewardTrainConfig:
    pairs: str = opt("", "Pairs JSONL written by `prlm rm pairs`.")
    out: str = opt("", "Checkpoint folder to write (model, tokenizer, prlm_rm_config.json).")
    backbone: str = opt("minilm", "Encoder: 'minilm' (embedded), 'bert-base-uncased' (the paper's), a local folder "
                        "or a Hugging Face id.")
    max_length: int = opt(256, "Token limit of one (input, answer) pair; the input side is cut first.")
    context_entries: int = opt(0, "Profile context items (the pairs' 'context': the user's past outputs) put before "
                               "the input, within max_length; 0 scores (input, answer) alone, as the paper does.")
    kinds: str = opt("", "Train only on these pair kinds, comma separated (empty = every pair in the file).")
    kind_weights: str = opt("", "Sampling weight per pair kind, e.g. 'own-vs-other-user=1,preamble=0.3': each "
                            "epoch's training pairs of a kind are subsampled (weight < 1) or repeated (> 1), "
                            "deterministically; kinds not named keep weight 1.")
    role: str = opt("reward", "'reward': train on the partition's rm-train users, report on held-out users; "
                    "'judge': the separate evaluation model, trained on held-out users, reported on rm-train users.")
    batch_size: int = opt(64, "Pairs per training batch (the paper's 64).")
    eval_batch_size: int = opt(64, "Pairs per validation batch.")
    learning_rate: float = opt(5e-5, "Learning rate (the paper's 5e-5).", renamed_from="lr")
    epochs: float = opt(3.0, "Training epochs (the paper's 3).")
    split: str = opt("users", "How pairs are split: 'users' (by a hash of user_id: rm-train, validation and "
                     "held-out users, no user in two parts) or 'random' (the authors' train_bert.py: all pairs "
                     "shuffled by seed, val_fraction of them for validation, the rest trained on, no held-out "
                     "users; role and held_out_share are not used).")
    val_fraction: float = opt(0.1, "Share of users (by a hash of user_id) that choose the epoch, never reported; with "
                              "split random, the share of pairs.")
    held_out_share: float = opt(0.45, "Share of users (by a hash of user_id) held out from the reward model: its "
                                "figures are reported on them, and the judge trains on them.")
    select_epoch: bool = opt(True, "Keep the epoch most accurate on the validation pairs; false keeps the last epoch "
                                   "(the authors' train_bert.py reports on its 10 percent but saves the third epoch).")
    seed: int = opt(0, "Seed for the head's initialization, the kind subsampling and the data order.")
    device: str = opt("auto", "'cpu', 'cuda' or 'auto' (CUDA when available).")
    bf16: bool = opt(False, "bf16 mixed precision (GPU only).")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass (TRL's default is on; "
                                       "it saves memory a small encoder does not need, at about a third more time).")
    overwrite: bool = opt(False, "Replace an existing checkpoint folder.")

    def __post_init__(self):
        if not self.pairs:
            raise PrlmError("pairs is required: pass --pairs FILE.jsonl (from `prlm rm pairs`)")
        if not self.out:
            raise PrlmError("out is required: pass --out runs/NAME (the checkpoint folder)")
        for name in ("max_length", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise PrlmError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise PrlmError(f"max_length={self.max_length} is too short for an input and an answer; use 64 or more")
        if self.context_entries < 0:
            raise PrlmError(f"context_entries must be >= 0, got {self.context_entries}")
        if not self.learning_rate > 0:
            raise PrlmError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.epochs > 0:
            raise PrlmError(f"epochs must be > 0, got {self.epochs}")
        if not 0 <= self.val_fraction < 1:
            raise PrlmError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check_choice("role", self.role, ROLES)
        check_choice("split", self.split, SPLITS)
        if self.split == "random" and self.role != "reward":
            raise PrlmError("split random has no held-out users for a judge to train on: use split users with "
                            "role judge")
        if self.split == "users":
            _ = self.partition  # building the partition validates the two shares
        parse_kind_weights(self.kind_weights)

    @property
    def partition(self) -> UserPartition:
        return UserPartition(validation_share=self.val_fraction, held_out_share=self.held_out_share)


@dataclass
class RMEvalConfig:
    model: str = opt("", "Reward model checkpoint folder (from `prlm rm train`).")
    pairs: str = opt("", "Pairs JSONL to rank (from `prlm rm pairs`).")
    kinds: str = opt("", "Evaluate only these pair kinds, comma separated (empty = all).")
    batch_size: int = opt(64, "Pairs per scoring batch.")
    device: str = opt("cpu", "Device for the reward model: 'cpu', 'cuda', 'cuda:1' or 'auto'.")
    samples: int = opt(1000, "Bootstrap resamples of the pairs for the 95 percent intervals.")
    seed: int = opt(0, "Bootstrap seed.")
    backbone: str = opt("", "When set, the checkpoint must have been trained from this backbone.")
    users: str = opt("unseen", "'unseen': only pairs of users that neither trained the checkpoint nor chose its "
                     "epoch (the figures to report); 'all': every pair.")
    out: str = opt("", "JSON file to write the metrics and per-pair scores to (optional).")
    results: str = opt("", "JSON file of report rows to write (one per pair kind: data, split, pairs, n, accuracy, "
                       "lo, hi, model, command), e.g. results/reward-model/NAME.json.")
    data: str = opt("", "Dataset name written in the report rows (default: the name of the pairs file's folder).")
    name: str = opt("", "Model name written in the report rows (default: the checkpoint folder's name).")
    context: str = opt("own", "A check that a context model reads the user: 'own' (as trained), 'other-user' (each "
                       "pair gets the context of a pair of another user), or 'none' (no context).")

    def __post_init__(self):
        if not self.model:
            raise PrlmError("model is required: pass --model CHECKPOINT (from `prlm rm train`)")
        check_choice("users", self.users, ("unseen", "all"))
        check_choice("context", self.context, CONTEXT_CHECKS)
        if not self.pairs:
            raise PrlmError("pairs is required: pass --pairs FILE.jsonl")
        if self.batch_size < 1:
            raise PrlmError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.samples < 1:
            raise PrlmError(f"samples must be at least 1, got {self.samples}")


CONTEXT_CHECKS = ("own", "other-user", "none")


# --- loss and split ----------------------------------------------------------

def bradley_terry_loss(chosen, rejected):
    """Mean of ``-log sigmoid(s(x, y+) - s(x, y-))`` (the loss TRL's RewardTrainer minimizes)."""
    import torch

    return -torch.nn.functional.logsigmoid(torch.as_tensor(chosen) - torch.as_tensor(rejected)).mean()


SPLITS = ("users", "random")


def split_random(rows: Sequence[dict], validation_share: float, seed: int = 0) -> dict[str, list[dict]]:
    """Pairs shuffled by `seed` (`random.Random`), the first `validation_share` of them (rounded) for
    validation and the rest for training, as the authors' train_bert.py splits (sklearn's train_test_split,
    test_size 0.1); a user's pairs may fall on both sides, and no pair is held out for reporting."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = round(len(rows) * validation_share)
    return {"train": [rows[i] for i in sorted(order[n_val:])], "validation": [rows[i] for i in sorted(order[:n_val])],
            "report": []}


def split_by_user(rows: Sequence[dict], partition: UserPartition, role: str = "reward") -> dict[str, list[dict]]:
    """Pairs by use for a model of `role`: {'train', 'validation', 'report'}, by the user partition (a hash of
    user_id, so a user is in the same part in every file); no user is in two parts."""
    return partition.split_rows(rows, role)


def parse_kind_weights(text: str) -> dict[str, float]:
    """'a=1,b=0.3' -> {'a': 1.0, 'b': 0.3}; errors say what is wrong."""
    weights = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or weight < 0:
            raise PrlmError(f"kind_weights: '{item}' is not KIND=WEIGHT with a weight >= 0 "
                            "(e.g. 'own-vs-other-user=1,preamble=0.3')")
        weights[name.strip()] = weight
    return weights


def weight_kinds(rows: Sequence[dict], weights: dict[str, float], seed: int = 0) -> list[dict]:
    """Rows resampled by kind: a weight w keeps each row floor(w) times plus once more with probability
    frac(w) (a seeded draw per row), so a kind's expected count is w times its count."""
    if not weights:
        return list(rows)
    rng = random.Random(f"prlm-rm-kinds|{seed}")
    out = []
    for row in rows:
        weight = weights.get(row.get("kind", ""), 1.0)
        copies = int(weight) + (rng.random() < weight - int(weight))
        out.extend([row] * copies)
    return out


# --- encoding ----------------------------------------------------------------

def first_segment(tokenizer, text: str, context: Sequence[str] | None, context_entries: int) -> str:
    """The input side: up to `context_entries` profile items, then the input.

    The context comes first so that truncation (which cuts the end of the longer side) shortens the input's
    body, not the user's profile.
    """
    entries = list(context or [])[:context_entries]
    if not entries:
        return text
    sep = f" {tokenizer.sep_token} " if getattr(tokenizer, "sep_token", None) else "\n"
    return " ; ".join(entries) + sep + text


def encode_pairs(tokenizer, inputs: Sequence[str], answers: Sequence[str], contexts: Sequence | None,
                 context_entries: int, max_length: int) -> list[list[int]]:
    """Token ids of each (input side, answer) pair; the longer side is cut first."""
    if contexts is None:
        contexts = [None] * len(inputs)
    firsts = [first_segment(tokenizer, t, c, context_entries) for t, c in zip(inputs, contexts)]
    enc = tokenizer(firsts, list(answers), truncation="longest_first", max_length=max_length)
    return enc["input_ids"]


# --- the scorer --------------------------------------------------------------

def _resolve_device(device: str) -> str:
    from prlm.generation import resolve_device

    return resolve_device(device)


class RewardModel:
    """A loaded checkpoint: ``score(inputs, answers, contexts)`` gives the raw scores s(x, y)."""

    def __init__(self, model, tokenizer, config: dict, device: str = "cpu"):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.device = device
        self.tokenizer.padding_side = "right"  # as in training (absolute positions start at 0)
        self.model.to(device)
        self.model.eval()

    @property
    def context_entries(self) -> int:
        return int(self.config.get("context_entries", 0))

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    def encode(
        self, inputs: Sequence[str], answers: Sequence[str], contexts: Sequence | None = None
    ) -> list[list[int]]:
        if len(inputs) != len(answers) or (contexts is not None and len(contexts) != len(inputs)):
            with_contexts = f", {len(contexts)} contexts" if contexts is not None else ""
            raise PrlmError(f"score needs as many inputs as answers (and contexts): got {len(inputs)} inputs, "
                            f"{len(answers)} answers{with_contexts}")
        if self.context_entries and contexts is None:
            raise PrlmError(f"this reward model was trained with {self.context_entries} profile entries in its "
                            "context: pass the retrieved entries (a 'context' list per input)")
        return encode_pairs(self.tokenizer, inputs, answers, contexts, self.context_entries, self.max_length)

    def score(self, inputs: Sequence[str], answers: Sequence[str], contexts: Sequence | None = None,
              batch_size: int = 32) -> np.ndarray:
        """Raw scores, batched (longest first, little padding) under ``torch.inference_mode()``."""
        import torch

        ids = self.encode(inputs, answers, contexts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        scores = np.zeros(len(ids), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                logits = self.model(**enc).logits.reshape(-1).float().cpu().numpy()
                scores[batch] = logits
        return scores

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", backbone: str | None = None) -> RewardModel:
        return load_reward_model(path, device=device, backbone=backbone)


def read_rm_config(path: str | Path) -> dict:
    path = Path(path)
    cfg_file = path / RM_CONFIG_NAME
    if not path.is_dir() or not cfg_file.is_file():
        raise PrlmError(f"'{path}' is not a reward model checkpoint (no {RM_CONFIG_NAME}); "
                        "train one with `prlm rm train --out FOLDER`")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PrlmError(f"{cfg_file}: not valid JSON ({err.msg})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != RM_FORMAT:
        raise PrlmError(f"{cfg_file}: not a prlm reward model config (expected format '{RM_FORMAT}')")
    for key in ("backbone", "max_length", "context_entries", "model_type"):
        if key not in cfg:
            raise PrlmError(f"{cfg_file}: missing field '{key}'")
    return cfg


def load_reward_model(path: str | Path, device: str = "cpu", backbone: str | None = None) -> RewardModel:
    """Load a checkpoint written by :func:`train_reward_model` (or :func:`save_reward_model`).

    `backbone`, when given, must be the one the checkpoint was trained from.
    Any mismatch between the saved config and the weights is a one-line error.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    cfg = read_rm_config(path)
    if backbone is not None and backbone != cfg["backbone"]:
        raise PrlmError(f"checkpoint '{path}' was trained from backbone '{cfg['backbone']}', not '{backbone}'; "
                        f"pass --backbone {cfg['backbone']} or train a model on '{backbone}'")
    where = f"reward model checkpoint '{path}'"
    try:
        model_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise PrlmError(f"{where}: cannot read config.json ({_one_line(err)})") from None
    if model_config.model_type != cfg["model_type"]:
        raise PrlmError(f"{where}: config.json is a '{model_config.model_type}' model but {RM_CONFIG_NAME} names "
                        f"'{cfg['model_type']}' (backbone '{cfg['backbone']}'): the folder mixes two checkpoints")
    if getattr(model_config, "num_labels", None) != 1:
        raise PrlmError(f"{where}: the head has {model_config.num_labels} outputs, a reward model has 1")
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise PrlmError(f"{where}: the weights do not fit its config (another backbone's weights?): "
                        f"{_one_line(err)[:300]}") from None
    bad = list(info.get("missing_keys") or []) + [str(k[0]) if isinstance(k, tuple) else str(k)
                                                  for k in info.get("mismatched_keys") or []]
    if bad:
        raise PrlmError(f"{where}: {len(bad)} weight(s) missing or of the wrong shape (e.g. '{bad[0]}'): the weights "
                        f"were not saved from this '{cfg['backbone']}' reward model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise PrlmError(f"{where}: cannot load its tokenizer ({_one_line(err)})") from None
    if len(tokenizer) > model.config.vocab_size:
        raise PrlmError(f"{where}: its tokenizer has {len(tokenizer)} tokens but the model only "
                        f"{model.config.vocab_size}: the tokenizer belongs to another backbone")
    return RewardModel(model, tokenizer, cfg, device=_resolve_device(device))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def save_reward_model(out: str | Path, model, tokenizer, rm_config: dict, overwrite: bool = False) -> None:
    """Write model, tokenizer and prlm_rm_config.json into a temporary folder, then move it into place."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise PrlmError(f"'{out}' already exists; pass --overwrite true or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / RM_CONFIG_NAME, {"format": RM_FORMAT, "version": 1,
                                                 "model_type": model.config.model_type, **rm_config})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- evaluation --------------------------------------------------------------

def swap_contexts(rows: Sequence[dict], mode: str) -> list[dict]:
    """Rows with their context replaced: 'none' empties it; 'other-user' gives each row the context of the next
    row (in user order) that belongs to another user. 'own' leaves them as they are."""
    if mode == "own":
        return list(rows)
    if mode == "none":
        return [{**r, "context": []} for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (str(rows[i]["user_id"]), i))
    out = list(rows)
    for pos, i in enumerate(order):
        donor = next((order[(pos + step) % len(order)] for step in range(1, len(order))
                      if rows[order[(pos + step) % len(order)]]["user_id"] != rows[i]["user_id"]), None)
        if donor is None:
            raise PrlmError("context 'other-user' needs pairs of at least two users")
        out[i] = {**rows[i], "context": rows[donor].get("context") or []}
    return out


def pair_scores(rm: RewardModel, rows: Sequence[dict], batch_size: int = 32,
                allow_empty_context: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the chosen and the rejected side of each pair (one batched pass)."""
    inputs = [r["input"] for r in rows]
    contexts = [r.get("context") or [] for r in rows] if rm.context_entries else None
    if rm.context_entries and not any(contexts) and not allow_empty_context:
        raise PrlmError(f"this reward model uses {rm.context_entries} profile entries but the pairs carry no "
                        "'context'; make them with `prlm rm pairs`")
    answers = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    scores = rm.score(inputs + inputs, answers, (contexts + contexts) if contexts is not None else None, batch_size)
    return scores[:len(rows)], scores[len(rows):]


TIE_TOLERANCE = 1e-6  # scores this close come from the same encoded text, up to float noise


def pairwise_metrics(chosen: Sequence[float], rejected: Sequence[float], samples: int = 1000,
                     seed: int = 0) -> dict:
    """Pairwise accuracy (share of pairs with s(y+) > s(y-)) and mean margin, with bootstrap 95% intervals;
    also the ties (equal scores: an uncased tokenizer sees a case change as no change) and the share
    `lower_or_keep` of pairs whose rejected side does not score above the chosen one."""
    from prlm.evaluation import paired_bootstrap

    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    diff = chosen - rejected
    correct = (diff > TIE_TOLERANCE).astype(float)
    ties = np.abs(diff) <= TIE_TOLERANCE
    # accuracy = mean(correct) - 0 and margin = mean(chosen) - mean(rejected), both resampled by pair.
    acc = paired_bootstrap(np.zeros_like(correct), correct, metric="pairwise accuracy", samples=samples, seed=seed)
    margin = paired_bootstrap(rejected, chosen, metric="mean margin", samples=samples, seed=seed)
    return {"n": int(correct.size), "accuracy": acc.diff, "accuracy_ci": [acc.low, acc.high],
            "margin": margin.diff, "margin_ci": [margin.low, margin.high], "ties": int(ties.sum()),
            "lower_or_keep": float((correct + ties).mean()) if correct.size else 0.0, "samples": samples, "seed": seed}


def evaluate_pairs(rm: RewardModel, rows: Sequence[dict], batch_size: int = 32, samples: int = 1000,
                   seed: int = 0, allow_empty_context: bool = False) -> dict:
    """Pairwise accuracy and mean margin of a reward model on pairs, overall and per kind."""
    chosen, rejected = pair_scores(rm, rows, batch_size, allow_empty_context)
    result = pairwise_metrics(chosen, rejected, samples, seed)
    kinds = sorted({r.get("kind", "") for r in rows})
    if len(kinds) > 1:
        result["by_kind"] = {}
        for kind in kinds:
            idx = [i for i, r in enumerate(rows) if r.get("kind", "") == kind]
            result["by_kind"][kind] = pairwise_metrics(chosen[idx], rejected[idx], samples, seed)
    result["scores"] = {"chosen": chosen.tolist(), "rejected": rejected.tolist()}
    return result


# --- training ----------------------------------------------------------------

def read_pairs_of_kinds(path, kinds: str) -> list[dict]:
    """The pairs of a file, only those of the comma-separated `kinds` when given."""
    from prlm.reward.pairs import read_pairs

    rows = read_pairs(path)
    if kinds:
        wanted = {k.strip() for k in kinds.split(",") if k.strip()}
        rows = [r for r in rows if r.get("kind") in wanted]
        if not rows:
            raise PrlmError(f"{path}: no pairs of kind(s) {', '.join(sorted(wanted))}")
    return rows


# Report names of the pair kinds (docs/results.json's `reward_model` rows).
REPORT_NAMES = {"gold-vs-other-user": "own-vs-other-user", "rag-vs-no-profile": "with-vs-without-profile",
                "gold-vs-no-profile": "own-vs-no-profile"}


def seen_users(rm_config: dict) -> set[str]:
    """Users that trained a checkpoint or chose its epoch (from its prlm_rm_config.json)."""
    users = rm_config.get("users", {})
    lists = [users.get("train"), users.get("validation")]
    if not all(isinstance(x, list) for x in lists):
        raise PrlmError("this checkpoint does not list its training users (trained before issue 14); "
                        "pass --users all, or train it again")
    return {str(u) for x in lists for u in x}


def unseen_rows(rows: Sequence[dict], rm_config: dict) -> list[dict]:
    seen = seen_users(rm_config)
    kept = [r for r in rows if str(r["user_id"]) not in seen]
    if not kept:
        raise PrlmError("every pair belongs to a user the checkpoint trained on or chose its epoch on; "
                        "evaluate on other users, or pass --users all")
    return kept


def report_rows(result: dict, rows: Sequence[dict], data: str, model: str, command: str) -> list[dict]:
    """One row per pair kind: {data, split, pairs, n, accuracy, lo, hi, model, command}."""
    kinds = result.get("by_kind") or {rows[0].get("kind", ""): result}
    splits = sorted({str(r.get("split", "")) for r in rows})
    split = splits[0] if len(splits) == 1 else ",".join(splits)
    return [{"data": data, "split": split, "pairs": REPORT_NAMES.get(kind, kind), "n": m["n"],
             "accuracy": round(m["accuracy"], 4), "lo": round(m["accuracy_ci"][0], 4),
             "hi": round(m["accuracy_ci"][1], 4), "model": model, "command": command}
            for kind, m in sorted(kinds.items())]


def run_rm_eval(cfg: RMEvalConfig, command: str = "") -> dict:
    """`prlm rm eval`: metrics of a checkpoint on a pairs file (written to `cfg.out` when set), per kind, on the
    users it never saw by default; report rows to `cfg.results` when set."""

    started = time.time()
    rows = read_pairs_of_kinds(cfg.pairs, cfg.kinds)
    rm = load_reward_model(cfg.model, device=cfg.device, backbone=cfg.backbone or None)
    if cfg.users == "unseen":
        rows = unseen_rows(rows, rm.config)
    rows = swap_contexts(rows, cfg.context)
    scoring_started = time.time()
    result = evaluate_pairs(rm, rows, cfg.batch_size, cfg.samples, cfg.seed, allow_empty_context=cfg.context == "none")
    scoring_s = time.time() - scoring_started
    result.update(model=str(cfg.model), pairs=str(cfg.pairs), users=cfg.users, context=cfg.context,
                  n_users=len({r["user_id"] for r in rows}), pairs_per_s=round(len(rows) / max(scoring_s, 1e-9), 2),
                  torch_threads=_torch_threads(), wall_time_s=round(time.time() - started, 1))
    if cfg.results:
        data = cfg.data or Path(cfg.pairs).resolve().parent.name
        result["report_rows"] = report_rows(result, rows, data, cfg.name or Path(cfg.model).name, command)
        atomic_write_json(cfg.results, result["report_rows"])
    if cfg.out:
        scores = result.pop("scores")
        atomic_write_json(cfg.out, {**result, "per_pair": [
            {"pair_id": r.get("pair_id"), "id": r["id"], "user_id": r["user_id"], "kind": r.get("kind"),
             "chosen_score": c, "rejected_score": j} for r, c, j in zip(rows, scores["chosen"], scores["rejected"])]})
        result["scores"] = scores
    return result


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _pair_trainer_class():
    """TRL's RewardTrainer, with validation accuracy and margin computed over all pairs.

    (RewardTrainer averages per-batch means, which over-weights a short last
    batch; the loss, the optimization and the checkpointing are TRL's.)
    """
    from trl import RewardTrainer

    class PairRewardTrainer(RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if getattr(self, "_val_diffs", None) is not None and not self.model.training:
                chosen, rejected = outputs.logits.detach().float().squeeze(-1).chunk(2)
                self._val_diffs.append((chosen - rejected).cpu())
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, *args, **kwargs):
            self._val_diffs = []  # collected by compute_loss, consumed by log
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                self._val_diffs = None

        def log(self, logs, start_time=None):
            if not self.model.training and getattr(self, "_val_diffs", None):
                import torch

                diffs = torch.cat(self._val_diffs)
                self._metrics["eval"]["accuracy"] = [(diffs > 0).float().mean().item()]
                self._metrics["eval"]["margin"] = [diffs.mean().item()]
                self._val_diffs = []
            super().log(logs, start_time)

    return PairRewardTrainer


def train_reward_model(cfg: RewardTrainConfig, progress: bool = True) -> dict:
    """Train on the pairs file, validate on held-out users each epoch, save the best epoch; returns its config."""
    import torch

    from prlm.evaluation import environment

    started = time.time()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise PrlmError(f"'{out}' already exists; pass --overwrite true or another --out")
    use_cpu = _resolve_device(cfg.device) == "cpu"
    if use_cpu and cfg.bf16:
        raise PrlmError("bf16 mixed precision needs a GPU; drop --bf16 on the CPU")
    rows, train_rows, val_rows, report_rows = _training_pairs(cfg)
    path, tokenizer, model = _load_backbone(cfg)
    steps_per_epoch = max(1, math.ceil(len(train_rows) / cfg.batch_size))
    model, history, best_checkpoint, dropped_identical = _fit(cfg, model, tokenizer, train_rows, val_rows,
                                                              steps_per_epoch, use_cpu, progress)
    rm_config = {
        "backbone": cfg.backbone,
        "backbone_path": path,
        "max_length": cfg.max_length,
        "context_entries": cfg.context_entries,
        "train_config": asdict(cfg),
        "pairs_file": str(cfg.pairs),
        "role": cfg.role,
        "task": next((r["task"] for r in rows if r.get("task")), None),
        "dropped_identical_after_tokenization": dropped_identical,
        "split": cfg.split,
        "partition": cfg.partition.as_dict() if cfg.split == "users" else {"validation_share": cfg.val_fraction,
                                                                          "seed": cfg.seed},
        "pairs": {"total": len(rows), "train": len(train_rows), "validation": len(val_rows),
                  "report": len(report_rows)},
        "users": {"train": sorted({str(r["user_id"]) for r in train_rows}),
                  "validation": sorted({str(r["user_id"]) for r in val_rows}),
                  "report": sorted({str(r["user_id"]) for r in report_rows})},
        "epochs": history,
        "best_epoch": _best_epoch(history, best_checkpoint, steps_per_epoch),
    }
    rm = RewardModel(model, tokenizer, {**rm_config, "model_type": model.config.model_type},
                     device="cpu" if use_cpu else _resolve_device(cfg.device))
    rm_config.update(_pair_metrics(rm, val_rows, report_rows, cfg.eval_batch_size))
    rm_config["wall_time_s"] = round(time.time() - started, 1)
    rm_config["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    rm_config["environment"] = environment()
    rm_config["torch_threads"] = torch.get_num_threads()
    save_reward_model(out, rm.model, tokenizer, rm_config, overwrite=cfg.overwrite)
    return rm_config


def _training_pairs(cfg: RewardTrainConfig) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """The pairs file's rows, then its users' pairs: train (kinds weighted), validation and report."""
    rows = read_pairs_of_kinds(cfg.pairs, cfg.kinds)
    if cfg.context_entries and not all(r.get("context") for r in rows):
        missing = next(i for i, r in enumerate(rows) if not r.get("context"))
        raise PrlmError(f"{cfg.pairs}: pair {missing + 1} ('{rows[missing].get('pair_id', rows[missing]['id'])}') "
                        "has no 'context' entries, needed for context_entries > 0")
    if cfg.split == "random":
        parts = split_random(rows, cfg.val_fraction, cfg.seed)
    else:
        parts = split_by_user(rows, cfg.partition, cfg.role)
    train_rows = weight_kinds(parts["train"], parse_kind_weights(cfg.kind_weights), cfg.seed)
    if not train_rows:
        if cfg.split == "random":
            raise PrlmError(f"{cfg.pairs}: {len(rows)} pair(s) leave none to train on after the validation share "
                            f"{cfg.val_fraction}; use more pairs or a lower val_fraction")
        raise PrlmError(f"{cfg.pairs}: no pair belongs to the users a '{cfg.role}' model trains on "
                        f"({len({r['user_id'] for r in rows})} user(s) in the file); use a file with more users "
                        "or lower val_fraction / held_out_share")
    return rows, train_rows, parts["validation"], parts["report"]


def _load_backbone(cfg: RewardTrainConfig):
    """The encoder's resolved path, its tokenizer (padding on the right) and the model with a new scalar head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from prlm.models import _call_loader, resolve_encoder_path

    path = resolve_encoder_path(cfg.backbone)
    set_seed(cfg.seed)  # the head is initialized at random when the model is built
    tokenizer = _call_loader(cfg.backbone, path, lambda: AutoTokenizer.from_pretrained(path))
    model = _call_loader(cfg.backbone, path,
                         lambda: AutoModelForSequenceClassification.from_pretrained(path, num_labels=1))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return path, tokenizer, model


def _pair_dataset(cfg: RewardTrainConfig, tokenizer, part: Sequence[dict], dropped_identical: dict[str, int]):
    """`part` encoded as TRL's chosen_ids / rejected_ids; pairs whose sides encode alike are counted, by kind."""
    from datasets import Dataset

    inputs = [r["input"] for r in part]
    contexts = [r.get("context") for r in part]
    args = (contexts, cfg.context_entries, cfg.max_length)
    chosen = encode_pairs(tokenizer, inputs, [r["chosen"] for r in part], *args)
    rejected = encode_pairs(tokenizer, inputs, [r["rejected"] for r in part], *args)
    # Sides that encode to the same tokens (a case change under an uncased tokenizer, a sign-off cut by
    # max_length) teach nothing and would count as errors in validation: dropped, and counted.
    keep = [i for i in range(len(part)) if chosen[i] != rejected[i]]
    for i in set(range(len(part))) - set(keep):
        kind = part[i].get("kind", "")
        dropped_identical[kind] = dropped_identical.get(kind, 0) + 1
    return Dataset.from_dict({"chosen_ids": [chosen[i] for i in keep],
                              "rejected_ids": [rejected[i] for i in keep]})


def _reward_args(
    cfg: RewardTrainConfig, work: Path, steps_per_epoch: int, has_val: bool, use_cpu: bool, progress: bool
):
    """TRL's options: with validation pairs, evaluate and save every epoch and keep the most accurate."""
    from trl import RewardConfig

    return RewardConfig(
        output_dir=str(work),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch" if has_val else "no",
        load_best_model_at_end=has_val and cfg.select_epoch,
        metric_for_best_model="accuracy" if has_val else None,
        greater_is_better=True,
        save_only_model=True,
        save_total_limit=1,
        logging_steps=max(1, steps_per_epoch // 2),
        report_to=[],
        use_cpu=use_cpu,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_length=None,  # pairs are truncated when encoded, never dropped
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


def _fit(cfg: RewardTrainConfig, model, tokenizer, train_rows: Sequence[dict], val_rows: Sequence[dict],
         steps_per_epoch: int, use_cpu: bool, progress: bool):
    """TRL's training in a scratch folder beside `out` (removed after); returns the model (of the best epoch
    with validation pairs), the per-epoch history, the best checkpoint's name and the pairs dropped as identical."""
    out = Path(cfg.out)
    has_val = bool(val_rows)
    dropped_identical: dict[str, int] = {}
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.trainer-", dir=_mkdir(out.parent)))
    args = _reward_args(cfg, work, steps_per_epoch, has_val, use_cpu, progress)
    try:
        trainer = _pair_trainer_class()(
            model=model, args=args, train_dataset=_pair_dataset(cfg, tokenizer, train_rows, dropped_identical),
            eval_dataset=_pair_dataset(cfg, tokenizer, val_rows, dropped_identical) if has_val else None,
            processing_class=tokenizer)
        trainer.train()
        return (trainer.model, _epoch_history(trainer.state.log_history), trainer.state.best_model_checkpoint,
                dropped_identical)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pair_metrics(rm: RewardModel, val_rows: Sequence[dict], report_rows: Sequence[dict], batch_size: int) -> dict:
    """Accuracy on the validation pairs (`selection`) and on the report users' pairs (`held_out`), where there are."""
    metrics = {}
    if val_rows:
        # The epoch was chosen on these pairs, so their accuracy is optimistic: kept as `selection`, not reported.
        metrics["selection"] = {k: v for k, v in evaluate_pairs(rm, val_rows, batch_size).items() if k != "scores"}
    if report_rows:
        # The reported figure: users that neither trained the model nor chose its epoch.
        metrics["held_out"] = {k: v for k, v in evaluate_pairs(rm, report_rows, batch_size).items()
                               if k != "scores"}
    return metrics


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _epoch_history(log_history: list[dict]) -> list[dict]:
    """Per epoch: validation accuracy, margin and loss; the training loss logged last before it."""
    history, train_loss = [], None
    for entry in log_history:
        if "loss" in entry:
            train_loss = entry["loss"]
        if "eval_accuracy" in entry:
            history.append({"epoch": round(float(entry.get("epoch", 0)), 3), "step": entry.get("step"),
                            "val_accuracy": entry["eval_accuracy"], "val_margin": entry.get("eval_margin"),
                            "val_loss": entry.get("eval_loss"), "train_loss": train_loss})
    return history


def _best_epoch(history: list[dict], best_checkpoint: str | None, steps_per_epoch: int):
    if not history:
        return None
    if best_checkpoint:
        step = int(str(best_checkpoint).rstrip("/").rsplit("-", 1)[-1])
        for entry in history:
            if entry["step"] == step:
                return entry["epoch"]
    return max(history, key=lambda e: e["val_accuracy"])["epoch"]
