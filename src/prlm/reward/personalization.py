"""`PersonalizationReward`: the reward model as a TRL reward function.

TRL calls reward functions as ``f(prompts, completions, **kwargs) -> list[float]``
where every dataset column other than ``prompt`` arrives as a keyword list
aligned with the completions (each row repeated once per generation). This
reward reads the question's input text from the column ``input`` (the LaMP
``input``, the same text the reward model was trained on; change it with
``input_key``) and, for a model trained with profile entries in its context,
the retrieved entries from the column ``context`` (a list of rendered entries
per row, as ``prlm rm pairs`` writes them; ``context_key``).

For each completion it extracts the final answer (``answers.parse_completion``,
method ``prlm`` with the ``<think>`` pre-fill by default: only the answer is
scored, never the reasoning), scores the (input, answer) pairs in batches and
returns ``sigmoid(score)`` in (0, 1). Degenerate answers (``reward.degenerate``: empty,
no letter or digit, ``<think>`` inside the answer, or parroting the prompt's template) get ``penalty``
instead (default 0.0, the bottom of the sigmoid's range).

The penalty for empty answers. The authors give an empty answer -10 before
weighting (-1 after their 0.1 weight). We keep 0.0 by default, the bottom of
the sigmoid's range, and leave the authors' value one option away
(``penalty=-10``): an empty answer already scores 0 on the accuracy reward and
on the format reward's answer check, so it is last in its group anyway, while
a -10 outlier inflates the group's standard deviation in GRPO's
normalization and so shrinks the advantages that separate the non-empty
answers of the same group, which is where the learning signal is.

The model is loaded on first call on the device given to the constructor
(default cpu), never at import or construction time, and is dropped when the
object is pickled (TRL and multiprocessing pickle reward functions).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prlm import PrlmError
from prlm.answers import REASONING_METHOD, THINK_PREFILL
from prlm.options import opt
from prlm.reward.degenerate import completion_answer, degenerate_reason

DEFAULT_NAME = "personalization"


class PersonalizationReward:
    """A picklable TRL reward function scoring answers with a trained personalization reward model."""

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 32, input_key: str = "input",
                 context_key: str = "context", method: str = REASONING_METHOD, prefill: str = THINK_PREFILL,
                 task: str | None = None, penalty: float = 0.0, backbone: str | None = None,
                 name: str = DEFAULT_NAME):
        from prlm.prompts import PROMPT_METHODS

        if method not in PROMPT_METHODS:
            raise PrlmError(f"unknown completion method '{method}'; use one of {', '.join(PROMPT_METHODS)}")
        if batch_size < 1:
            raise PrlmError(f"batch_size must be at least 1, got {batch_size}")
        self.model_path, self.device, self.batch_size = str(model_path), device, batch_size
        self.input_key, self.context_key = input_key, context_key
        self.method, self.prefill, self.task, self.penalty = method, prefill, task, float(penalty)
        self.backbone = backbone
        self.__name__ = name  # TRL logs rewards under this name
        self._rm = None

    # -- pickling: never ship the weights --------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_rm"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"PersonalizationReward({self.model_path!r}, device={self.device!r}, loaded={self._rm is not None})"

    @property
    def model(self):
        """The reward model, loaded on first use."""
        if self._rm is None:
            from prlm.reward.model import load_reward_model

            self._rm = load_reward_model(self.model_path, device=self.device, backbone=self.backbone)
        return self._rm

    # -- scoring ----------------------------------------------------------
    def extract(self, completions: Sequence[Any]) -> tuple[list[str], list[str]]:
        """(answers, degenerate reasons) of completions."""
        from prlm.data.tasks import get_task

        task = get_task(self.task) if self.task else None
        pairs = [completion_answer(c, self.method, task, self.prefill) for c in completions]
        answers, reasons = [a for a, _ in pairs], [r for _, r in pairs]
        return answers, reasons

    def score_answers(self, inputs: Sequence[str], answers: Sequence[str], contexts: Sequence | None = None,
                      reasons: Sequence[str] | None = None) -> tuple[list[float], list[float | None]]:
        """(rewards, raw scores): sigmoid of the raw score, or the penalty (raw None) for degenerate answers."""
        if reasons is None:
            reasons = [degenerate_reason(a) for a in answers]
        keep = [i for i, r in enumerate(reasons) if not r]
        raw: list[float | None] = [None] * len(answers)
        if keep:
            rm = self.model
            ctx = [contexts[i] for i in keep] if (contexts is not None and rm.context_entries) else None
            if rm.context_entries and ctx is None:
                raise PrlmError(f"reward model '{self.model_path}' uses {rm.context_entries} profile entries: pass "
                                f"them in a '{self.context_key}' column (a list of entries per row)")
            scores = rm.score([inputs[i] for i in keep], [answers[i] for i in keep], ctx, self.batch_size)
            for i, s in zip(keep, scores):
                raw[i] = float(s)
        rewards = [self.penalty if s is None else _sigmoid(s) for s in raw]
        return rewards, raw

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
        inputs = kwargs.get(self.input_key)
        if inputs is None:
            known = ", ".join(sorted(k for k in kwargs)) or "none"
            raise PrlmError(f"reward '{self.__name__}' needs the input text of each completion in a dataset column "
                            f"'{self.input_key}' (columns passed: {known})")
        if isinstance(inputs, str):
            inputs = [inputs] * len(completions)
        if len(inputs) != len(completions):
            raise PrlmError(f"column '{self.input_key}' has {len(inputs)} values for {len(completions)} completions")
        contexts = kwargs.get(self.context_key)
        answers, reasons = self.extract(completions)
        rewards, _ = self.score_answers(list(inputs), answers, contexts, reasons)
        return rewards


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


# --- `prlm rm score` ---------------------------------------------------------

@dataclass
class ScoreConfig:
    model: str = opt("", "Reward model checkpoint folder (from `prlm rm train`).")
    input: str = opt("", "Input text of one pair to score (with --answer).")
    answer: str = opt("", "Answer text of one pair to score (with --input).")
    file: str = opt("", "JSONL to score instead: 'input' and 'answer' per line (and 'context' when the model uses "
                    "profile entries).")
    out: str = opt("", "JSONL to write with --file: each row with 'score' (raw), 'reward' (sigmoid or penalty) "
                   "and 'penalized' added.")
    penalty: float = opt(0.0, "Reward of empty or template-parroting answers.")
    batch_size: int = opt(32, "Pairs per scoring batch.")
    device: str = opt("cpu", "Device for the reward model: 'cpu', 'cuda', 'cuda:1' or 'auto'.")
    backbone: str = opt("", "When set, the checkpoint must have been trained from this backbone.")

    def __post_init__(self):
        if not self.model:
            raise PrlmError("model is required: pass --model CHECKPOINT (from `prlm rm train`)")
        if bool(self.file) == bool(self.input or self.answer):
            raise PrlmError("pass either --input TEXT --answer TEXT, or --file FILE.jsonl")
        if not self.file and not (self.input and self.answer):
            raise PrlmError("pass both --input TEXT and --answer TEXT")
        if self.out and not self.file:
            raise PrlmError("--out goes with --file")
        if self.batch_size < 1:
            raise PrlmError(f"batch_size must be at least 1, got {self.batch_size}")


def score_rows(cfg: ScoreConfig) -> list[dict]:
    """Score the pair of `cfg` or every row of its file; writes `cfg.out` when set."""
    from prlm.io import atomic_write_jsonl, read_jsonl

    if cfg.file:
        if not Path(cfg.file).is_file():
            raise PrlmError(f"file '{cfg.file}' not found")
        rows = read_jsonl(cfg.file)
        for n, row in enumerate(rows, start=1):
            for key in ("input", "answer"):
                if not isinstance(row, dict) or not isinstance(row.get(key), str):
                    raise PrlmError(f"{cfg.file}: row {n}: needs a string field '{key}'")
    else:
        rows = [{"input": cfg.input, "answer": cfg.answer}]
    reward = PersonalizationReward(cfg.model, device=cfg.device, batch_size=cfg.batch_size, penalty=cfg.penalty,
                                   backbone=cfg.backbone or None)
    contexts = [r.get("context") or [] for r in rows] if any("context" in r for r in rows) else None
    answers = [r["answer"] for r in rows]
    reasons = [degenerate_reason(a) for a in answers]
    rewards, raw = reward.score_answers([r["input"] for r in rows], answers, contexts, reasons)
    out = [{**r, "score": s, "reward": w, "penalized": reason or None}
           for r, s, w, reason in zip(rows, raw, rewards, reasons)]
    if cfg.out:
        atomic_write_jsonl(cfg.out, out)
    return out


def format_score(row: dict) -> str:
    raw = "-" if row["score"] is None else f"{row['score']:.4f}"
    note = f" (penalized: {row['penalized']})" if row.get("penalized") else ""
    return json.dumps({"score": raw, "reward": round(row["reward"], 4)}) + note
