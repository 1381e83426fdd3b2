"""The learning curve on dev: the policy evaluated greedily during GRPO.

Every `dev_eval_steps` steps (and at step 0, the start policy, and at the
last step) the policy answers a fixed subset of the dev split the way
`prlm eval --method prlm` does: the reasoning prompt with the training
retriever, k and prompt budget, greedy decoding for `max_completion_length`
tokens, stopping at `</answer>`, the answer parsed by `prlm.answers` and
scored by `prlm.evaluation`. (No budget forcing: the curve shows what the
policy writes on its own.)

It plugs into TRL as a `TrainerCallback`; its figures go into the run's step
log next to the training rewards (`dev/rougeL`, `dev/format_rate`,
`dev/answer_words`), each evaluation's per-question rows into
`OUT/dev_evals/step-N.jsonl`, and the policy best on dev ROUGE-L into
`OUT/best` (model, tokenizer and `best.json`).

`prlm sft` keeps the same curve over the prompt it trains on (`SftDevCurve`):
the `rag` prompt, answers read up to EOS as `prlm eval --method rag` reads
them (or, for the reasoning-format start, the reasoning prompt), no step 0 (its candidates are trained steps), each
evaluation a row of `OUT/dev_curve.jsonl`. In both, a later step replaces
`OUT/best` only when it scores strictly higher: a tie keeps the earlier step.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import TrainerCallback

from prlm.answers import REASONING_METHOD, has_reasoning_format, parse_completion, stop_strings
from prlm.data import get_task
from prlm.evaluation import rouge
from prlm.generation import HFGenerator, SamplingParams
from prlm.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from prlm.prompts import prompted_examples
from prlm.training.sampling_copy import drop_forward_patches, restore_forward_patches

EVALS_FOLDER = "dev_evals"
BEST_FOLDER = "best"
BEST_FILE = "best.json"
SCORE_KEY = "dev/rougeL"
CURVE_FILE = "dev_curve.jsonl"
RAG_METHOD = "rag"


@dataclass
class DevQuestion:
    id: str
    user_id: str
    prompt: str
    prefill: str
    gold: str


def dev_questions(cfg, tokenizer, retriever=None, method: str = REASONING_METHOD) -> list[DevQuestion]:
    """The fixed dev subset (the first `dev_eval_limit` questions), prompted as training prompts are
    (`method`: the prompt trained on; `retriever`: rankings computed once, or None to retrieve as `cfg` says)."""
    dev_cfg = replace(cfg, split="dev", limit=cfg.dev_eval_limit)
    return [DevQuestion(ex.id, ex.user_id, prompt.text, prompt.prefill, ex.gold)
            for ex, prompt, _ in prompted_examples(dev_cfg, tokenizer, method, retriever)]


def evaluate_policy(model, tokenizer, questions: list[DevQuestion], task_name: str, max_new_tokens: int,
                    batch_size: int = 8, method: str = REASONING_METHOD) -> tuple[list[dict], dict]:
    """Greedy answers of `model` to `questions` prompted by `method`: per-question rows and the means
    (keys `dev/...`; the format rate only for the reasoning method, the one prompt with a format)."""
    task = get_task(task_name)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=stop_strings(method))
    was_training = model.training
    model.eval()
    cuda = [model.device.index or 0] if model.device.type == "cuda" else []
    try:
        # HFGenerator seeds the global RNG; the rollouts that follow must not restart from that seed.
        with torch.random.fork_rng(devices=cuda), own_forward(model):
            completions = [c[0] for c in HFGenerator(model, tokenizer, batch_size).generate(
                [q.prompt for q in questions], params, progress=False, desc="dev curve")]
    finally:
        model.train(was_training)
    reasoning = method == REASONING_METHOD
    rows = []
    for question, completion in zip(questions, completions):
        answer = parse_completion(completion, method, task, prefill=question.prefill).answer
        row = {"id": question.id, "user_id": question.user_id, "answer": answer, "gold": question.gold,
               "rougeL": rouge(answer, question.gold)["rougeL"]}
        if reasoning:
            row["format_ok"] = has_reasoning_format(completion, question.prefill)
        rows.append({**row, "completion": completion})
    n = max(len(rows), 1)
    summary = {SCORE_KEY: sum(r["rougeL"] for r in rows) / n}
    if reasoning:
        summary["dev/format_rate"] = sum(r["format_ok"] for r in rows) / n
    summary.update({"dev/answer_words": sum(len(r["answer"].split()) for r in rows) / n,
                    "dev/empty_answers": sum(not r["answer"] for r in rows)})
    return rows, summary


@contextmanager
def own_forward(model):
    """Run `model` with its class's forward, in its own dtype, as `prlm eval` runs a saved policy.

    Under mixed precision accelerate replaces the training model's `forward` by one that autocasts to bf16
    (TRL's fused LM head does likewise); greedy answers under bf16 differ from float32's on about a third of
    the dev questions, so a curve evaluated through it would not be the figure `prlm eval` gives.
    """
    patches = drop_forward_patches(model)
    try:
        yield model
    finally:
        restore_forward_patches(patches)


def improves(score: float, best: float | None) -> bool:
    """Whether a dev score replaces the best so far: strictly higher only, so a tie keeps the earlier step
    (fewer steps for the same dev score)."""
    return best is None or score > best


def _save_policy(model, tokenizer, folder: Path) -> None:
    if hasattr(model, "merge_and_unload"):  # LoRA: save a merged copy, leave the training model as it is
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class CurveLog:
    """The rows of OUT/dev_curve.jsonl, one per evaluation, rewritten atomically after each."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def append(self, row: dict) -> None:
        self.rows.append(row)
        atomic_write_jsonl(self.path, self.rows)


class DevCurve(TrainerCallback):
    """GRPO's curve: evaluates on dev at step 0, every `dev_eval_steps` steps and at the last step with the
    reasoning prompt; keeps the dev-best policy.

    The figures of a step are handed to the step log through `take_pending()`
    (the step logger merges them into that step's row); step 0, which has no
    training row, is appended to the log directly.
    """

    method = REASONING_METHOD  # the prompt the policy is evaluated with: the one it is trained on
    at_start = True  # evaluate the start policy too (step 0)

    def __init__(self, cfg, questions: list[DevQuestion], log, resumed: bool = False):
        self.cfg, self.questions, self.log, self.resumed = cfg, questions, log, resumed
        self.out = Path(cfg.out)
        self.pending: dict = {}
        best = self.out / BEST_FOLDER / BEST_FILE
        self.best_score = json.loads(best.read_text())["score"] if best.is_file() else None

    def take_pending(self) -> dict:
        pending, self.pending = self.pending, {}
        return pending

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        # on_train_begin runs before a resumed trainer restores its step: the start policy was evaluated then.
        if state.is_world_process_zero and self.at_start and not self.resumed:
            self.log.append({"step": 0, **self.evaluate(0, model, processing_class)})

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if state.is_world_process_zero and (step % self.cfg.dev_eval_steps == 0 or step == state.max_steps):
            self.record(step, self.evaluate(step, model, processing_class))

    def record(self, step: int, summary: dict) -> None:
        self.pending = summary  # the step logger merges it into this step's row

    def max_new_tokens(self) -> int:
        return self.cfg.max_completion_length

    def evaluate(self, step: int, model, tokenizer) -> dict:
        started = time.time()
        rows, summary = evaluate_policy(model, tokenizer, self.questions, self.cfg.task, self.max_new_tokens(),
                                        self.cfg.dev_eval_batch_size, self.method)
        atomic_write_jsonl(self.out / EVALS_FOLDER / f"step-{step}.jsonl", rows)
        if improves(summary[SCORE_KEY], self.best_score):
            self.save_best(model, tokenizer, step, summary)
        summary["dev/eval_time_s"] = round(time.time() - started, 2)
        return summary

    def save_best(self, model, tokenizer, step: int, summary: dict) -> None:
        """Replace OUT/best with this policy; written beside it first so a kill never leaves half a model."""
        best, staging = self.out / BEST_FOLDER, self.out / f"{BEST_FOLDER}.writing"
        shutil.rmtree(staging, ignore_errors=True)
        _save_policy(model, tokenizer, staging)
        atomic_write_json(staging / BEST_FILE, {"step": step, "score": summary[SCORE_KEY], "metric": "rougeL",
                                                "split": "dev", "n": len(self.questions), **summary})
        shutil.rmtree(best, ignore_errors=True)
        staging.rename(best)
        self.best_score = summary[SCORE_KEY]


class SftDevCurve(DevCurve):
    """sft's curve, prompted as sft trains (`completion_format`): the `rag` prompt and answers read up to EOS
    (as `prlm eval --method rag`), or the reasoning prompt as GRPO's curve; answers of `dev_max_new_tokens`,
    evaluated every `dev_eval_steps` steps and at the last, never at step 0 (the untrained model is not a
    step count to choose); each evaluation is its own row of `log`, since SFTTrainer keeps no step log of
    prlm's."""

    at_start = False

    def __init__(self, cfg, questions: list[DevQuestion], log, method: str = RAG_METHOD):
        super().__init__(cfg, questions, log)
        self.method = method

    def record(self, step: int, summary: dict) -> None:
        self.log.append({"step": step, **summary})

    def max_new_tokens(self) -> int:
        return self.cfg.dev_max_new_tokens


def make_dev_curve(cfg, tokenizer, log, resumed: bool, retriever=None) -> DevCurve:
    return DevCurve(cfg, dev_questions(cfg, tokenizer, retriever), log, resumed)


def make_sft_dev_curve(cfg, tokenizer) -> SftDevCurve:
    """sft's curve, logging into OUT/dev_curve.jsonl."""
    method = REASONING_METHOD if cfg.completion_format == "reasoning" else RAG_METHOD
    return SftDevCurve(cfg, dev_questions(cfg, tokenizer, method=method), CurveLog(Path(cfg.out) / CURVE_FILE),
                       method)


def plot_learning_curve(run: str | Path, png: str | Path | None = None) -> Path:
    """Dev ROUGE-L, dev format rate and the mean training reward against the step, from a run's
    train_log.jsonl; written to `png` (default OUT/learning_curve.png). Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    rows = read_jsonl(run / "train_log.jsonl")
    dev = [r for r in rows if SCORE_KEY in r]
    train = [r for r in rows if "reward" in r]
    if not dev and not train:
        raise ValueError(f"{run / 'train_log.jsonl'} has no dev evaluations and no training rewards to plot")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    if dev:
        steps = [r["step"] for r in dev]
        top.plot(steps, [r[SCORE_KEY] for r in dev], "o-", label="dev ROUGE-L")
        top.plot(steps, [r["dev/format_rate"] for r in dev], "s--", label="dev format rate")
        best = max(dev, key=lambda r: r[SCORE_KEY])
        top.axvline(best["step"], color="grey", linestyle=":", label=f"dev-best step {best['step']}")
        top.legend(loc="best", fontsize=8)
    else:  # said on the figure, so an empty panel is not read as a run whose evaluations were lost
        top.text(0.5, 0.5, "no dev evaluation during training (dev_eval_steps 0)", ha="center", va="center",
                 transform=top.transAxes)
    top.set_ylabel("dev (greedy)")
    top.grid(alpha=0.3)
    if train:
        steps = [r["step"] for r in train]
        bottom.plot(steps, [r["reward"] for r in train], "-", label="mean training reward")
        if all("frac_reward_zero_std" in r for r in train):
            bottom.plot(steps, [r["frac_reward_zero_std"] for r in train], ":",
                        label="share of groups with one reward (no signal)")
    bottom.set_xlabel("GRPO step")
    bottom.set_ylabel("training")
    bottom.legend(loc="best", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.suptitle(run.name)
    fig.tight_layout()
    png = Path(png) if png else run / "learning_curve.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
