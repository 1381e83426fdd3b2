"""PrLM training: an optional supervised warm-up of the format, then GRPO.

TRL's `GRPOTrainer` is the engine; prlm plugs in through its extension
points only: reward functions with TRL's signature, `reward_weights`, a
callback that records every step, and TRL's own checkpointing for resume.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import time
from pathlib import Path

from prlm import PrlmError
from prlm.answers import ANSWER_CLOSE, REASONING_METHOD, prefill_for, reply_after_prefill
from prlm.data import get_task
from prlm.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, claim_output_dir, read_jsonl
from prlm.prompts import prompted_examples
from prlm.training.checkpoints import checkpoint_step, checkpoint_to_resume
from prlm.training.config import TrainConfig

LOG_NAME = "train_log.jsonl"


# The warm-up's reasoning quotes the user's closest past output in this sentence; `quoted_past_output` reads it
# back, to measure how far the answers follow what their reasoning cites (the report's reasoning table).
CLOSEST_PAST = 'The user\'s closest past {name}: "{output}".'


def warmup_completion(task, entries, query: str, gold: str) -> str:
    """A short reasoning trace for the supervised warm-up, built from the data
    alone: the user's most relevant past output and what the new text is about.
    Kept short so that reasoning and answer fit the completion budget."""
    about = " ".join(task.query(query).split()[:8])
    if entries:
        closest = CLOSEST_PAST.format(name=task.output_name, output=entries[0][task.output_field])
    else:
        closest = f"No past {task.output_name}s are given."
    return reply_after_prefill(f" {closest} The new text is about: {about}", gold)


def quoted_past_output(completion: str, task) -> str | None:
    """The past output a completion's reasoning quotes in the warm-up's sentence (`CLOSEST_PAST`), or None
    when the reasoning holds no such quote. The quote ends at the first `".` that ends a sentence."""
    head, _, tail = CLOSEST_PAST.partition("{output}")
    opening = re.escape(head.format(name=task.output_name))
    match = re.search(opening + r'(.*?)' + re.escape(tail) + r'(?:\s|<|$)', completion, flags=re.DOTALL)
    return match.group(1) if match else None


def in_warmup_share(question_id: str, share: float) -> bool:
    """Whether the supervised warm-up trains on this question: a hash of the id, not Python's hash()
    (salted per process), so the same questions fall in the share on every run and machine."""
    if share >= 1:
        return True
    digest = hashlib.sha256(str(question_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def training_rows(cfg: TrainConfig, tokenizer, retriever=None) -> list[dict]:
    """One row per training question: the reasoning prompt plus the columns the rewards read,
    and whether the warm-up trains on it (`warmup`). `retriever`: see `train_grpo`."""
    task = get_task(cfg.task)
    prompted = list(prompted_examples(cfg, tokenizer, REASONING_METHOD, retriever))  # in cfg.prompt's wording
    rows = [{"id": ex.id, "user_id": ex.user_id, "prompt": prompt.text, "input": ex.input, "gold": ex.gold,
             "retrieved_ids": [e["id"] for e in used],
             "warmup_completion": warmup_completion(task, used, ex.input, ex.gold),
             "warmup": in_warmup_share(ex.id, cfg.warmup_share)}
            for ex, prompt, used in prompted]
    contexts = reward_context_column(cfg, [ex for ex, _, _ in prompted])
    if contexts is not None:
        for row, context in zip(rows, contexts):
            row["context"] = context
    return rows


def reward_model_config(cfg: TrainConfig) -> dict:
    """The personalization reward model's saved config (`prlm_rm_config.json`), read before any model loads,
    so a wrong path fails in a second rather than after the warm-up."""
    from prlm.reward.model import read_rm_config

    try:
        return read_rm_config(cfg.reward_model)
    except PrlmError as err:
        raise PrlmError(f"reward model: {err}, or pass --w-pers 0 to train without the personalization term") from None


def reward_context_column(cfg: TrainConfig, examples) -> list[list[str]] | None:
    """The user's past outputs that a context reward model reads beside each answer (its 'context'
    column), built as its training pairs were; None when the personalization term needs none."""
    if not cfg.w_pers:
        return None
    entries = int(reward_model_config(cfg).get("context_entries", 0))
    if not entries:
        return None
    from prlm.reward.style_pairs import reward_contexts

    return reward_contexts(cfg.task, [ex.input for ex in examples], [ex.profile for ex in examples], k=entries)


def split_questions(cfg: TrainConfig, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(warm-up rows, GRPO rows): the warm-up's share, and all questions or those it did not see."""
    warmup = [r for r in rows if r["warmup"]]
    grpo = [r for r in rows if not r["warmup"]] if cfg.grpo_questions == "unseen" else rows
    trains_warmup = cfg.sft_steps and not cfg.warmup_from
    for name, part in (("the warm-up", warmup if trains_warmup else rows), ("GRPO", grpo)):
        if not part:
            raise PrlmError(f"warmup_share {cfg.warmup_share} leaves {name} no questions out of {len(rows)}; "
                            "choose a share further from 0 and 1, or use more questions (--limit)")
    return warmup, grpo


def reward_functions(cfg: TrainConfig) -> tuple[list, list[float]]:
    """PrLM's reward terms and their weights, as TRL takes them (`reward_funcs`, `GRPOConfig.reward_weights`).

    TRL sums the weighted terms into one reward per completion and normalizes it within each prompt's group
    (the advantage); it also logs every term on its own, which is how the step log shows each one. The
    personalization term is left out entirely at w_pers = 0, so no reward model is loaded."""
    from prlm.reward.accuracy import AccuracyReward
    from prlm.reward.format import FormatReward

    prefill = prefill_for(REASONING_METHOD, cfg.prompt)  # what the prompt wrote of each reply: readers need it
    funcs = [AccuracyReward(cfg.metric_list, prefill=prefill, normalize=cfg.normalize_rewards, rouge=cfg.rouge),
             FormatReward(prefill=prefill, reject_degenerate=cfg.format_rejects_degenerate, style=cfg.format_reward)]
    if cfg.w_pers:
        from prlm.reward.personalization import PersonalizationReward

        reward_model_config(cfg)
        funcs.append(PersonalizationReward(cfg.reward_model, device=cfg.reward_device, prefill=prefill,
                                           penalty=cfg.empty_answer_penalty))
    return funcs, reward_weights(cfg)


def reward_weights(cfg: TrainConfig) -> list[float]:
    """The weights of `reward_functions`' terms, in their order (no reward model is read)."""
    return [cfg.w_acc, cfg.w_fmt] + ([cfg.w_pers] if cfg.w_pers else [])


def lora_config(cfg: TrainConfig):
    """PEFT's LoraConfig for `cfg` (None without `lora`): rank, alpha, dropout and target modules as set."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")


def grpo_args(cfg: TrainConfig, weights: list[float] | None = None):
    """TRL's GRPOConfig for `cfg`; `weights`: the reward weights of the terms the trainer gets (build_trainer's:
    `reward_weights(cfg)` plus any extra terms), None for TRL's equal weights."""
    from trl import GRPOConfig

    return GRPOConfig(**grpo_kwargs(cfg), reward_weights=weights)


def grpo_kwargs(cfg: TrainConfig) -> dict:
    """TRL GRPOConfig arguments for a prlm TrainConfig."""
    return dict(
        output_dir=str(Path(cfg.out) / "checkpoints"),
        max_steps=cfg.max_steps or -1,  # transformers runs num_train_epochs passes when max_steps is not positive
        num_train_epochs=cfg.epochs,
        # TRL's batch counts completions, not prompts: each step samples G completions of prompts_per_step prompts.
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        gradient_accumulation_steps=1,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_rate} if cfg.min_lr_rate else None,  # cosine_with_min_lr
        warmup_steps=cfg.warmup_ratio,  # transformers reads a value below 1 as a share of the training steps
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high or None,  # TRL reads None as epsilon
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        num_iterations=cfg.num_iterations,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=1,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=cfg.use_cpu,
        bf16=cfg.bf16,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # The lighter sampling copy's correction takes TRL's settings for vLLM's samples (sampling_copy.py).
        vllm_importance_sampling_mode=cfg.sampling_correction if cfg.corrects_sampling else "token_truncate",
        vllm_importance_sampling_clip_min=cfg.sampling_ratio_min,
        vllm_importance_sampling_clip_max=cfg.sampling_ratio_max,
        report_to=[r for r in cfg.report_to.split(",") if r and r != "none"],
        remove_unused_columns=False,  # the rewards read the dataset's extra columns (gold, input, context)
        dataloader_num_workers=0,
    )


class StepLog:
    """Every logged step as one JSON row (and the same table as CSV); rewritten
    atomically so a killed run never leaves a torn file."""

    def __init__(self, out: Path):
        self.jsonl, self.csv = out / LOG_NAME, out / "train_log.csv"
        self.rows = read_jsonl(self.jsonl) if self.jsonl.is_file() else []

    def truncate(self, step: int) -> None:
        """Forget steps after `step` (they are redone after a resume)."""
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]
        self._write()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        atomic_write_jsonl(self.jsonl, self.rows)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv, buffer.getvalue())


def make_step_callback(log: StepLog, extra_logs=None):
    """`extra_logs`: a callable returning figures to add to the step's row (the dev curve's)."""
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):
        """Adds the step's wall time (and the dev curve's figures) to TRL's logs and records them."""

        def __init__(self):
            self.started = time.time()
            self.step_time = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_time = time.time() - self.started

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "train_runtime" in logs:
                return
            logs["step_time_s"] = round(self.step_time or 0.0, 3)
            if extra_logs is not None:
                logs.update(extra_logs())
            log.append({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})

    return StepLogger()


def supervised_warmup(cfg: TrainConfig, rows: list[dict], model, tokenizer):
    """Teach the output format on gold answers before GRPO (as R1-style recipes do)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["warmup_completion"] + tokenizer.eos_token}
                              for r in rows])
    args = SFTConfig(
        output_dir=str(Path(cfg.out) / "sft"), max_steps=cfg.sft_steps,
        per_device_train_batch_size=cfg.sft_micro_batch,
        gradient_accumulation_steps=cfg.sft_batch_size // cfg.sft_micro_batch,
        learning_rate=cfg.sft_learning_rate, lr_scheduler_type="constant", logging_steps=5, save_strategy="no",
        report_to=[], use_cpu=cfg.use_cpu, bf16=cfg.bf16, seed=cfg.seed, completion_only_loss=True,
        max_length=cfg.max_prompt_tokens + cfg.max_completion_length, dataset_num_proc=None,
        # TRL's SFT default recomputes activations (slower); follow the GRPO setting instead.
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    return trainer.model


def build_trainer(cfg: TrainConfig, model, tokenizer, grpo_rows: list[dict], callbacks: list = (),
                  extra_rewards: list[tuple] = ()):
    """TRL's GRPOTrainer (or prlm's prefix-sharing subclass) for `cfg`, with PrLM's weighted rewards
    and the shared-prefix rollout plugged in; not yet trained."""
    from datasets import Dataset
    from trl import GRPOTrainer

    funcs, weights = reward_functions(cfg)
    funcs += [f for f, _ in extra_rewards]
    weights += [w for _, w in extra_rewards]
    # transformers reads the TensorBoard folder from the environment only.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(cfg.out) / "tensorboard")
    args = grpo_args(cfg, weights)
    peft_config = lora_config(cfg)
    rollout_func = None
    if cfg.rollout == "shared-prefix" and not cfg.use_vllm:
        from prlm.training.rollout import SharedPrefixRollout

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental by TRL
        rollout_func = SharedPrefixRollout(stop_strings=(ANSWER_CLOSE,) if cfg.stop_at_answer else (),
                                           sampling_copy=cfg.sampling_copy)
    trainer_class = GRPOTrainer
    if cfg.uses_prefix_sharing:
        from prlm.training.prefix_sharing import PrefixSharingGRPOTrainer

        trainer_class = PrefixSharingGRPOTrainer
    dataset = Dataset.from_list([{k: v for k, v in r.items() if k not in ("warmup_completion", "warmup")}
                                 for r in grpo_rows])
    trainer = trainer_class(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                            processing_class=tokenizer, peft_config=peft_config, rollout_func=rollout_func,
                            callbacks=list(callbacks))
    trainer.sampling_correction = cfg.corrects_sampling
    return trainer


def train_grpo(cfg: TrainConfig, extra_rewards: list[tuple] = (), retriever=None) -> Path:
    """Warm-up (once) then GRPO; returns the folder of the final policy (`out/final`).

    `extra_rewards`: (reward_function, weight) pairs added to PrLM's terms, for
    custom objectives; each function has TRL's reward signature. `retriever` may be
    passed to reuse retrievals computed once (a `RankedRetriever` holding the train and
    dev splits' rankings) for the training prompts and the dev curve.
    """
    from prlm.models import load_policy

    started = time.time()
    out = claim_output_dir(cfg.out, "prlm train")
    resume_from = checkpoint_to_resume(out, cfg.resume)
    atomic_write_json(out / "train_config.json", cfg.__dict__)

    # GRPO starts from a finished warm-up when there is one (another run's, or this run's before a
    # resume), else from the base model, which is warmed up here when sft_steps asks for it.
    warm = out / "sft-model"
    done_warmup = cfg.warmup_from or (str(warm) if cfg.sft_steps and (warm / "config.json").is_file() else "")
    model, tokenizer = load_policy(done_warmup or cfg.model, device="cpu")  # the Trainer moves it to its device
    rows = training_rows(cfg, tokenizer, retriever)
    if not rows:
        raise PrlmError(f"no training questions in split '{cfg.split}' of '{cfg.data}'")
    warmup_rows, grpo_rows = split_questions(cfg, rows)
    grpo_ids = {r["id"] for r in grpo_rows}
    atomic_write_jsonl(out / "train_prompts.jsonl", [{**r, "grpo": r["id"] in grpo_ids} for r in rows])
    if cfg.sft_steps and not done_warmup:
        model = supervised_warmup(cfg, warmup_rows, model, tokenizer)
        model.save_pretrained(warm)
        tokenizer.save_pretrained(warm)

    log = StepLog(out)
    log.truncate(checkpoint_step(resume_from) if resume_from else 0)
    callbacks = [make_step_callback(log)]
    if cfg.dev_eval_steps:
        from prlm.training.dev_curve import make_dev_curve

        dev_curve = make_dev_curve(cfg, tokenizer, log, resumed=resume_from is not None, retriever=retriever)
        # The step logger comes first so that its step time does not include the evaluation.
        callbacks = [make_step_callback(log, dev_curve.take_pending), dev_curve]
    trainer = build_trainer(cfg, model, tokenizer, grpo_rows, callbacks, extra_rewards)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    final = out / "final"
    policy = trainer.model
    if cfg.lora:
        policy = policy.merge_and_unload()
    policy.save_pretrained(final)
    tokenizer.save_pretrained(final)
    atomic_write_json(out / "train_summary.json", {"steps": trainer.state.global_step, "final": str(final),
                                                   "questions": {"all": len(rows), "warmup": len(warmup_rows),
                                                                 "grpo": len(grpo_rows)},
                                                   "wall_time_s": round(time.time() - started, 1),
                                                   "config": cfg.__dict__})
    return final
