"""The supervised baseline (`sft`): the policy fine-tuned with TRL's SFTTrainer
on the train split's real outputs, prompted as RAG (same retriever and k).

It answers the reviewer's first question about PrLM: does RL with explicit
reasoning beat plain supervised tuning on the same data? The trained model is
evaluated with the `rag` prompt (`prlm eval --method rag --model OUT/final`).

A fair budget: with `dev_eval_steps: N` the model is evaluated greedily every N
steps (and at the last) on the first `dev_eval_limit` dev questions, prompted as
in training (`rag`, same retriever, k and prompt budget; answers of
`dev_max_new_tokens`, as eval's `max_new_tokens`). Each evaluation is a row of
OUT/dev_curve.jsonl (step, dev ROUGE-L, answer length in words), the per-question
answers are in OUT/dev_evals/step-N.jsonl, and the model of the best row is kept
in OUT/best (a tie keeps the earlier step; `best/best.json` says which step).
OUT/final stays the last step. The dev-chosen model is evaluated with

    prlm eval --method rag --model OUT/best

(on test only once its step count is fixed; sft_summary.json records the best
step, its dev score and the whole curve).

A long run in the background: `save_steps: N` checkpoints every N steps, and
the same command with `--resume` continues a killed run from the last one
(TRL's checkpoint: weights, optimizer, data position, random state), ending
with the model the uninterrupted run would have made.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prlm import PrlmError
from prlm.io import atomic_write_json, atomic_write_jsonl, claim_output_dir
from prlm.options import TrainerOptions, check_choice, opt
from prlm.prompts import MAX_PROMPT_TOKENS
from prlm.retrieval import ProfileDataConfig
from prlm.training.checkpoints import checkpoint_step, checkpoint_to_resume

COMPLETION_FORMATS = ("answer", "reasoning")


@dataclass
class SFTConfig(TrainerOptions, ProfileDataConfig):
    split: str = opt("train", "Split to train on.")
    retriever: str = opt("bm25", "Profile retriever of the RAG prompt (use the evaluation's).")
    k: int = opt(4, "Profile entries per prompt (use the evaluation's).")
    max_prompt_tokens: int = opt(MAX_PROMPT_TOKENS, "Token limit of a prompt (entries share what the input leaves).")
    max_answer_tokens: int = opt(48, "Tokens of the target kept (longer ones are cut): the real output, or with "
                                     "completion_format reasoning the reasoning and the answer together.")
    completion_format: str = opt("answer", "What the model learns to write: 'answer' (the real output after the "
                                           "rag prompt: the sft baseline) or 'reasoning' (after the prlm prompt, "
                                           "the warm-up's short reasoning in <think> and the real output in "
                                           "<answer>: the supervised start GRPO begins from, trained and chosen on "
                                           "dev like the baseline).")
    model: str = opt("smollm2-135m", "Policy to start from: 'smollm2-135m', a local folder or a Hugging Face id.")
    epochs: float = opt(1.0, "Passes over the training questions (ignored when max_steps > 0).")
    max_steps: int = opt(0, "Optimisation steps; 0 = run `epochs` passes.")
    batch_size: int = opt(8, "Examples per optimisation step.")
    micro_batch: int = opt(0, "Examples per forward pass; gradient accumulation makes up batch_size (the same "
                              "update, tested). 0 = batch_size in one pass, as the recorded sft runs were made. "
                              "Smaller holds fewer full-vocabulary logits at once: 2 is what the GRPO warm-up uses "
                              "for the same batch of 8 (sft_micro_batch).")
    learning_rate: float = opt(5e-5, "Learning rate (constant).")
    out: str = opt("", "Output folder: final/ (the tuned model), sft_summary.json, train_prompts.jsonl "
                       "(and best/, dev_curve.jsonl with dev_eval_steps).")
    dev_eval_steps: int = opt(0, "Evaluate the model greedily on dev every N steps (and at the last step), log dev "
                                 "ROUGE-L and answer length into OUT/dev_curve.jsonl, keep the dev-best model in "
                                 "OUT/best (ties: the earlier step); 0 = off.")
    dev_eval_limit: int = opt(40, "Questions of the dev split used for the dev curve: the first N, the same at "
                                  "every evaluation.")
    dev_max_new_tokens: int = opt(32, "Answer tokens generated in the dev evaluation (use the evaluation's "
                                      "max_new_tokens).")
    dev_eval_batch_size: int = opt(8, "Prompts per generation batch in the dev evaluation.")
    save_steps: int = opt(0, "Save a checkpoint (weights, optimizer, data position) into OUT/checkpoints every N "
                             "steps, the last two kept, so that a killed run can resume; 0 = none.")
    resume: bool = opt(False, "Continue from the last checkpoint in OUT/checkpoints (same options): the run ends "
                              "with the model an uninterrupted one would have. Not with dev_eval_steps.")

    def __post_init__(self):
        super().__post_init__()
        if not self.out:
            raise PrlmError("out is required: pass --out runs/NAME")
        for name in ("batch_size", "max_prompt_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise PrlmError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_choice("completion_format", self.completion_format, COMPLETION_FORMATS)
        if self.max_steps < 0:
            raise PrlmError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.micro_batch < 0 or (self.micro_batch and self.batch_size % self.micro_batch):
            raise PrlmError(f"micro_batch must divide batch_size ({self.batch_size}) or be 0 (one pass), got "
                            f"{self.micro_batch}; e.g. --micro-batch 2")
        if self.max_steps == 0 and self.epochs <= 0:
            raise PrlmError("set epochs > 0 or max_steps > 0 (how long to train)")
        if self.learning_rate <= 0:
            raise PrlmError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.dev_eval_steps < 0:
            raise PrlmError(f"dev_eval_steps must be >= 0 (0 = no dev curve), got {self.dev_eval_steps}")
        for name in ("dev_eval_limit", "dev_max_new_tokens", "dev_eval_batch_size"):
            if getattr(self, name) < 1:
                raise PrlmError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.save_steps < 0:
            raise PrlmError(f"save_steps must be >= 0 (0 = no checkpoints), got {self.save_steps}")
        if self.resume and self.dev_eval_steps:
            # the dev curve and best/ of the killed run would have to be merged with the resumed run's
            raise PrlmError("resume does not continue a dev curve: resume with --dev-eval-steps 0, or start the "
                            "run again without --resume")


def sft_rows(cfg: SFTConfig, tokenizer) -> list[dict]:
    """One row per training question: the prompt and its target (`completion_format`): the RAG prompt and the
    user's real output, or the reasoning prompt and the warm-up's completion (GRPO's `warmup_completion`)."""
    from prlm.answers import REASONING_METHOD
    from prlm.data import get_task
    from prlm.prompts import prompted_examples
    from prlm.training.grpo import warmup_completion

    if cfg.completion_format == "answer":
        return [{"id": ex.id, "prompt": prompt.text, "completion": ex.gold,
                 "retrieved_ids": [e["id"] for e in used]}
                for ex, prompt, used in prompted_examples(cfg, tokenizer, "rag")]
    task = get_task(cfg.task)
    return [{"id": ex.id, "prompt": prompt.text, "completion": warmup_completion(task, used, ex.input, ex.gold),
             "retrieved_ids": [e["id"] for e in used]}
            for ex, prompt, used in prompted_examples(cfg, tokenizer, REASONING_METHOD)]


def _dev_curve(cfg: SFTConfig, tokenizer) -> list:
    """The dev curve's callback (none without dev_eval_steps). A run with a dev curve never resumes, so a killed
    run's best/ and curve are removed first: they would otherwise compete with this run's steps."""
    if not cfg.dev_eval_steps:
        return []
    import shutil

    from prlm.training.dev_curve import BEST_FOLDER, CURVE_FILE, make_sft_dev_curve

    out = Path(cfg.out)
    shutil.rmtree(out / BEST_FOLDER, ignore_errors=True)
    (out / CURVE_FILE).unlink(missing_ok=True)
    return [make_sft_dev_curve(cfg, tokenizer)]


def _dev_summary(callbacks: list) -> dict:
    """The dev-best step, its dev ROUGE-L and folder, and the curve (for sft_summary.json)."""
    if not callbacks:
        return {}
    from prlm.training.dev_curve import BEST_FILE, BEST_FOLDER, SCORE_KEY

    curve = callbacks[0]
    best = json.loads((curve.out / BEST_FOLDER / BEST_FILE).read_text())
    return {"best": {"step": best["step"], "dev_rougeL": best["score"], "n": best["n"],
                     "folder": str(curve.out / BEST_FOLDER)},
            "dev_curve": [{"step": r["step"], "dev_rougeL": r[SCORE_KEY], "dev_answer_words": r["dev/answer_words"]}
                          for r in curve.log.rows]}


def sft_trainer(cfg: SFTConfig, model, tokenizer, rows: list[dict], callbacks=()):
    """TRL's SFTTrainer for `rows` (from `sft_rows`), as `train_sft` runs it (the benchmark times its steps)."""
    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    # The eos token teaches the model to stop after the answer, as greedy evaluation needs.
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"] + tokenizer.eos_token}
                              for r in rows])
    micro = cfg.micro_batch or cfg.batch_size
    args = TrlSFTConfig(
        output_dir=str(Path(cfg.out) / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=micro, gradient_accumulation_steps=cfg.batch_size // micro,
        learning_rate=cfg.learning_rate, lr_scheduler_type="constant", logging_steps=5,
        **({"save_strategy": "steps", "save_steps": cfg.save_steps} if cfg.save_steps else {"save_strategy": "no"}),
        save_total_limit=2,
        report_to=[], use_cpu=cfg.use_cpu, bf16=cfg.bf16, seed=cfg.seed, data_seed=cfg.seed, completion_only_loss=True,
        max_length=cfg.max_prompt_tokens + cfg.max_answer_tokens, dataset_num_proc=None,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                      callbacks=list(callbacks))


def train_sft(cfg: SFTConfig) -> Path:
    """Fine-tune and save `out/final` (and `out/best` with dev_eval_steps); returns `out/final`.
    A finished run is not redone."""
    from prlm.models import load_policy

    out, final = Path(cfg.out), Path(cfg.out) / "final"
    if (final / "config.json").is_file():
        raise PrlmError(f"'{final}' already holds a tuned model; choose another --out or delete it")
    claim_output_dir(out, "prlm sft")
    resume_from = checkpoint_to_resume(cfg.out, cfg.resume)
    started = time.time()
    model, tokenizer = load_policy(cfg.model, device="cpu")  # the Trainer moves it to its device
    rows = sft_rows(cfg, tokenizer)
    if not rows:
        raise PrlmError(f"no training questions in split '{cfg.split}' of '{cfg.data}'")
    atomic_write_jsonl(out / "train_prompts.jsonl", rows)
    callbacks = _dev_curve(cfg, tokenizer)
    trainer = sft_trainer(cfg, model, tokenizer, rows, callbacks)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    atomic_write_json(out / "sft_summary.json", {
        "steps": trainer.state.global_step, "train_loss": result.training_loss, "final": str(final),
        "examples": len(rows), "wall_time_s": round(time.time() - started, 1), "config": asdict(cfg),
        # this process's steps and wall time start there (the killed run's are not counted)
        **({"resumed_from_step": checkpoint_step(resume_from)} if resume_from else {}),
        "log": [r for r in trainer.state.log_history if "loss" in r], **_dev_summary(callbacks),
    })
    return final
