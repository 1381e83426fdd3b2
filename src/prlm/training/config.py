"""The training config: one dataclass, YAML recipes in configs/, CLI overrides."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from prlm import PrlmError
from prlm.answers import ANSWER_ONLY_STYLE
from prlm.options import TrainerOptions, check_choice, checks_inputs, opt
from prlm.prompts import MAX_PROMPT_TOKENS, PROMPT_STYLE_HELP, check_prompt_style
from prlm.retrieval import ProfileDataConfig
from prlm.reward.format import FORMAT_REWARD_HELP, FORMAT_REWARDS


@dataclass
class TrainConfig(TrainerOptions, ProfileDataConfig):
    # data and prompts (the shared fields are in ProfileDataConfig)
    split: str = opt("train", "Split to train on.")
    limit: int = opt(0, "Train on the first N questions only (0 = all; the paper used 500).")
    max_prompt_tokens: int = opt(MAX_PROMPT_TOKENS, "Token limit of a prompt (entries share what the input leaves).")
    prompt: str = opt("prlm", PROMPT_STYLE_HELP)
    # model
    model: str = opt("smollm2-135m", "Policy to start from: 'smollm2-135m', a local folder or a Hugging Face id.")
    lora: bool = opt(False, "Train LoRA adapters (the lora_* fields) instead of the full model.")
    lora_r: int = opt(16, "LoRA rank.")
    lora_alpha: int = opt(32, "LoRA alpha (the adapters' output is scaled by alpha / r).")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA adapters' input (0 <= p < 1).")
    lora_target: str = opt("all-linear", "Modules that get adapters: 'all-linear' (every linear layer but the output "
                                         "head) or a comma-separated list of module names (e.g. q_proj,v_proj).")
    # supervised warm-up of the output format
    sft_steps: int = opt(0, "Supervised warm-up steps on the format (<think>..</think><answer>gold</answer>) before "
                            "GRPO; 0 = none.")
    sft_learning_rate: float = opt(5e-5, "Learning rate of the warm-up.")
    sft_batch_size: int = opt(4, "Examples per warm-up step.")
    warmup_from: str = opt("", "Start GRPO from the warm-up policy of an earlier run (its OUT/sft-model folder) "
                               "instead of training one; for ablations that change only GRPO. sft_steps is then not "
                               "used.")
    warmup_share: float = opt(1.0, "Share of the training questions the supervised warm-up trains on (0 < share <= "
                                   "1), chosen by a hash of the question id (stable across runs and machines); the "
                                   "rest are never seen by the warm-up. 1 = all.")
    grpo_questions: str = opt("all", "Questions GRPO trains on: 'all', or 'unseen' (only those outside the warm-up "
                                     "share: the warm-up memorises its gold answers, so rewards on its own questions "
                                     "say little). 'unseen' needs warmup_share < 1.")
    sft_micro_batch: int = opt(2, "Examples per forward pass in the warm-up; gradient accumulation makes up "
                                  "sft_batch_size (same update, lower peak memory: the warm-up holds full-vocabulary "
                                  "logits for every position).")
    # GRPO
    max_steps: int = opt(20, "GRPO optimisation steps; 0 = run `epochs` passes over the GRPO questions.")
    epochs: float = opt(1.0, "Passes over the GRPO questions when max_steps is 0 (the authors' recipe: 5 over 500 "
                             "questions, one prompt a step); not used when max_steps > 0.")
    prompts_per_step: int = opt(2, "Distinct prompts per step; each is sampled num_generations times.")
    num_generations: int = opt(4, "Completions sampled per prompt (the GRPO group, G).")
    max_completion_length: int = opt(96, "Tokens generated at most per completion (reasoning + answer).")
    temperature: float = opt(0.9, "Sampling temperature of the rollouts.")
    top_p: float = opt(1.0, "Nucleus sampling mass of the rollouts.")
    learning_rate: float = opt(1e-5, "GRPO learning rate.")
    lr_scheduler_type: str = opt("constant", "Learning-rate schedule (any transformers name, e.g. constant, cosine, "
                                             "cosine_with_min_lr).")
    min_lr_rate: float = opt(0.0, "Floor of the learning rate as a share of learning_rate, for lr_scheduler_type "
                                  "cosine_with_min_lr (which needs it, 0 < rate < 1; the authors' 0.1); 0 with any "
                                  "other schedule.")
    warmup_ratio: float = opt(0.0, "Share of steps with a linear learning-rate warm-up.")
    beta: float = opt(0.0, "KL coefficient to the reference model (0 = no reference model, as recent GRPO recipes).")
    epsilon: float = opt(0.2, "Clipping range of the policy ratio.")
    epsilon_high: float = opt(0.0, "Upper clipping range of the policy ratio (DAPO's clip-higher, e.g. 0.28); 0 = the "
                                   "same as epsilon. Acts only when the ratio can leave 1: num_iterations > 1.")
    loss_type: str = opt("dapo", "TRL's GRPO loss aggregation: grpo, dapo, dr_grpo, bnpo.")
    scale_rewards: str = opt("group", "How advantages are scaled after the group mean is subtracted: 'group' (by the "
                                      "group's reward std, GRPO), 'batch' (by the batch's std) or 'none' (Dr. GRPO: "
                                      "groups that barely differ keep their small advantages).")
    num_iterations: int = opt(1, "Optimizer steps on each batch of rollouts (GRPO's mu); above 1 the ratio to the "
                                 "sampling policy leaves 1 and epsilon clips it.")
    max_grad_norm: float = opt(1.0, "Clip the gradient to this norm before each optimizer step (0 = no clipping).")
    # learning curve on dev
    dev_eval_steps: int = opt(0, "Evaluate the policy greedily on dev every N GRPO steps (and at step 0 and the last "
                                 "step), log dev ROUGE-L / format rate / answer length into train_log.jsonl, keep the "
                                 "dev-best policy in OUT/best; 0 = off.")
    dev_eval_limit: int = opt(40, "Questions of the dev split used for the learning curve: the first N, the same at "
                                  "every evaluation (0 = all).")
    dev_eval_batch_size: int = opt(8, "Prompts per generation batch in the dev evaluation.")
    # rewards
    w_acc: float = opt(1.0, "Weight of the accuracy reward (ROUGE of the answer against the user's real output).")
    w_fmt: float = opt(0.1, "Weight of the format reward (<think>..</think><answer>..</answer>).")
    format_reward: str = opt("prlm", FORMAT_REWARD_HELP)
    format_rejects_degenerate: bool = opt(False, "The format reward also pays 0 for an answer in format that is "
                                                 "degenerate: empty, without letters or digits, or parroting the "
                                                 "prompt's template (reward.degenerate); off: the recipes' reward.")
    w_pers: float = opt(0.1, "Weight of the personalization reward model (needs reward_model).")
    empty_answer_penalty: float = opt(0.0, "Personalization reward (before its weight) of an answer that is empty or "
                                           "degenerate (reward.degenerate: no letter or digit, the prompt's template "
                                           "or its placeholder 'generated title' repeated) instead of the reward "
                                           "model's score in (0, 1); the authors' LaMP-4 code gives -10, prlm 0.")
    accuracy_metrics: str = opt("rouge1,rouge2,rougeL", "Comma-separated ROUGE metrics summed by the accuracy reward.")
    rouge: str = opt("rouge-score", "How the accuracy reward computes ROUGE: 'rouge-score' (LaMP's tokens, as "
                                    "evaluation) or 'authors' (the PrLM release's lower-cased jieba tokens and "
                                    "rouge_chinese; needs pip install 'prlm[paper-rouge]'). docs/paper-recipe.md.")
    normalize_rewards: bool = opt(False, "Scale each reward term to 0..1 before weighting (ROUGE sum / number of "
                                         "metrics).")
    reward_model: str = opt("", "Checkpoint folder of the personalization reward model (prlm rm train); empty = no "
                                "personalization term.")
    reward_device: str = opt("cpu", "Device of the reward model.")
    # run
    out: str = opt("", "Output folder: checkpoints/, final/, train_log.jsonl, train_log.csv, tensorboard/.")
    save_steps: int = opt(10, "Save a checkpoint every N steps (resume restarts from the last one).")
    save_total_limit: int = opt(2, "Checkpoints kept.")
    resume: bool = opt(False, "Continue from the last checkpoint in out/checkpoints.")
    rollout: str = opt("shared-prefix", "Rollout generation without vLLM: 'shared-prefix' (each prompt prefilled once "
                                        "for its whole group; faster) or 'trl' (TRL's own generate).")
    stop_at_answer: bool = opt(True, "End each shared-prefix rollout right after `</answer>`, as evaluation does: no "
                                     "decoding step is spent on text the rewards never read (rollout 'trl' and vLLM "
                                     "run to EOS).")
    sampling_copy: str = opt("off", "Sample the shared-prefix rollouts from a lighter copy of the policy, refreshed "
                                    "after every optimizer step: 'off' (the policy itself), 'bf16' or 'int8'; the "
                                    "loss corrects for the copy's distribution (sampling_correction). Needs the "
                                    "prefix-shared log-prob pass and beta 0.")
    sampling_correction: str = opt("token_truncate", "Importance weights policy / copy on each token's loss, as TRL "
                                                     "weights vLLM's samples: token_truncate, token_mask, "
                                                     "sequence_truncate, sequence_mask, or none (no correction).")
    sampling_ratio_min: float = opt(0.0, "Lower bound of the importance weights (truncated up to it, or masked "
                                         "below it).")
    sampling_ratio_max: float = opt(3.0, "Upper bound of the importance weights (TRL's default for vLLM's).")
    prefix_sharing: str = opt("auto", "Log-prob passes that run each group's prompt once and score only completion "
                                      "tokens (same objective as TRL's, tested): 'auto' = on the CPU only (3x faster "
                                      "there; on a GPU at this size the extra pass costs more than it saves, measured "
                                      "in docs/gpu/benchmarks-grpo-h100.md), 'on', 'off' (TRL's own pass). Several "
                                      "processes, DeepSpeed or activation checkpointing always use TRL's pass.")
    use_vllm: bool = opt(False, "Generate rollouts with vLLM (GPU); replaces `rollout`.")
    vllm_mode: str = opt("colocate", "vLLM mode: colocate (same GPUs) or server (trl vllm-serve).")
    report_to: str = opt("tensorboard", "Comma-separated trackers for transformers (tensorboard, wandb, none).")

    @property
    def uses_prefix_sharing(self) -> bool:
        return self.prefix_sharing == "on" or (self.prefix_sharing == "auto" and self.use_cpu)

    def __post_init__(self):
        super().__post_init__()
        from prlm.evaluation import ROUGE_KEYS, check_rouge_choice

        check_prompt_style(self.prompt)
        check_choice("format_reward", self.format_reward, FORMAT_REWARDS)
        # 'lamp' changes how a split's means are reported; a reward scores one answer, as 'rouge-score' does.
        check_rouge_choice("rouge", self.rouge, ("rouge-score", "authors"))
        self._check_schedule()
        self._check_lora()
        check_choice("loss_type", self.loss_type, ("grpo", "dapo", "dr_grpo", "bnpo"))
        check_choice("scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        self._check_policy_update()
        check_choice("vllm_mode", self.vllm_mode, ("colocate", "server"))
        check_choice("rollout", self.rollout, ("shared-prefix", "trl"))
        check_choice("prefix_sharing", self.prefix_sharing, ("auto", "on", "off"))
        check_choice("grpo_questions", self.grpo_questions, ("all", "unseen"))
        self._check_sampling_copy()
        if not 0 < self.warmup_share <= 1:
            raise PrlmError(f"warmup_share must be in (0, 1], got {self.warmup_share}; e.g. --warmup-share 0.5")
        if self.grpo_questions == "unseen" and self.warmup_share >= 1:
            raise PrlmError("grpo_questions 'unseen' leaves GRPO no questions while warmup_share is 1: "
                            "pass e.g. --warmup-share 0.5")
        if self.grpo_questions == "unseen" and not (self.sft_steps or self.warmup_from):
            raise PrlmError("grpo_questions 'unseen' needs a warm-up (sft_steps > 0 or warmup_from); "
                            "without one every question is unseen: use --grpo-questions all")
        if self.grpo_questions == "unseen" and self.warmup_from and checks_inputs():
            self._check_warmup_share_of(Path(self.warmup_from).parent / "train_config.json")
        if self.prompt == ANSWER_ONLY_STYLE and self.sft_steps:
            raise PrlmError(f"the warm-up writes reasoning, which prompt '{ANSWER_ONLY_STYLE}' leaves out: start "
                            "from a trained policy (model or warmup_from) with --sft-steps 0")
        if self.dev_eval_steps < 0:
            raise PrlmError(f"dev_eval_steps must be >= 0 (0 = off), got {self.dev_eval_steps}")
        if self.dev_eval_limit < 0 or self.dev_eval_batch_size < 1:
            raise PrlmError(f"dev_eval_limit must be >= 0 (0 = all), got {self.dev_eval_limit}; "
                            f"dev_eval_batch_size at least 1, got {self.dev_eval_batch_size}")
        if self.sft_micro_batch < 1 or self.sft_batch_size % self.sft_micro_batch:
            raise PrlmError(f"sft_batch_size ({self.sft_batch_size}) must be a multiple of sft_micro_batch "
                            f"({self.sft_micro_batch}); e.g. --sft-micro-batch {self.sft_batch_size}")
        if not self.out:
            raise PrlmError("out is required: pass --out runs/NAME")
        if self.warmup_from and checks_inputs() and not (Path(self.warmup_from) / "config.json").is_file():
            raise PrlmError(f"warmup_from '{self.warmup_from}' holds no model (no config.json); point it at the "
                            "sft-model folder of a finished run, e.g. runs/commit-subject/train/sft-model")
        if self.num_generations < 2:
            raise PrlmError(f"num_generations must be at least 2 (GRPO compares completions within a group), got "
                            f"{self.num_generations}")
        for name in ("max_steps", "prompts_per_step", "max_completion_length", "save_steps"):
            if getattr(self, name) < (0 if name == "max_steps" else 1):
                raise PrlmError(f"{name} is out of range: {getattr(self, name)}")
        if self.max_steps == 0 and not self.epochs > 0:
            raise PrlmError(f"max_steps 0 runs `epochs` passes, but epochs is {self.epochs}: set epochs > 0 (e.g. 5) "
                            "or max_steps > 0")
        metrics = self.metric_list
        if not metrics or any(m not in ROUGE_KEYS for m in metrics):
            raise PrlmError(f"accuracy_metrics must be a comma-separated subset of {', '.join(ROUGE_KEYS)}, got "
                            f"'{self.accuracy_metrics}'")
        if self.w_pers and not self.reward_model:
            raise PrlmError("w_pers > 0 needs a reward model: pass --reward-model CKPT (from `prlm rm train`) or "
                            "--w-pers 0")
        if min(self.w_acc, self.w_fmt, self.w_pers) < 0:
            raise PrlmError("reward weights must be >= 0")
        if "tensorboard" in self.report_to.split(",") and importlib.util.find_spec("tensorboard") is None:
            raise PrlmError("report_to: tensorboard needs the tensorboard extra: pip install 'prlm[tensorboard]' "
                            "(make installs it), or set report_to: none")
        if self.temperature <= 0:
            raise PrlmError("temperature must be > 0: GRPO needs diverse samples within a group")

    def _check_sampling_copy(self) -> None:
        from prlm.training.sampling_copy import CORRECTION_MODES, SAMPLING_COPIES

        check_choice("sampling_copy", self.sampling_copy, SAMPLING_COPIES)
        check_choice("sampling_correction", self.sampling_correction, CORRECTION_MODES)
        if not 0 <= self.sampling_ratio_min < self.sampling_ratio_max:
            raise PrlmError(f"need 0 <= sampling_ratio_min < sampling_ratio_max, got {self.sampling_ratio_min} and "
                            f"{self.sampling_ratio_max}; e.g. --sampling-ratio-max 3")
        if self.sampling_copy == "off":
            return
        if self.use_vllm or self.rollout != "shared-prefix" or not self.uses_prefix_sharing:
            raise PrlmError(f"sampling_copy '{self.sampling_copy}' samples in the shared-prefix rollout and is "
                            "corrected in the prefix-shared pass: use rollout: shared-prefix, prefix_sharing on/auto "
                            "on the CPU and no vLLM, or sampling_copy: off")
        if self.beta and self.sampling_correction != "none":
            raise PrlmError("sampling_copy with a KL term (beta > 0) is not corrected exactly: set beta: 0 or "
                            "sampling_copy: off")

    def _check_policy_update(self) -> None:
        if not 0 < self.epsilon < 1 or self.epsilon_high < 0:
            raise PrlmError(f"epsilon must be in (0, 1) and epsilon_high >= 0 (0 = epsilon), got {self.epsilon} and "
                            f"{self.epsilon_high}; e.g. --epsilon 0.2 --epsilon-high 0.28")
        if self.num_iterations < 1:
            raise PrlmError(f"num_iterations must be >= 1 (optimizer steps per batch of rollouts), got "
                            f"{self.num_iterations}")
        if self.max_grad_norm < 0:
            raise PrlmError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")

    @property
    def corrects_sampling(self) -> bool:
        return self.sampling_copy != "off" and self.sampling_correction != "none"

    def _check_schedule(self) -> None:
        if self.lr_scheduler_type == "cosine_with_min_lr":
            if not 0 < self.min_lr_rate < 1:
                raise PrlmError(f"lr_scheduler_type cosine_with_min_lr needs min_lr_rate in (0, 1) (the floor as a "
                                f"share of learning_rate), got {self.min_lr_rate}; e.g. --min-lr-rate 0.1")
        elif self.min_lr_rate:
            raise PrlmError(f"min_lr_rate {self.min_lr_rate} is the floor of lr_scheduler_type cosine_with_min_lr, "
                            f"not of '{self.lr_scheduler_type}': set lr_scheduler_type: cosine_with_min_lr, or "
                            "min_lr_rate: 0")
        if not 0 <= self.warmup_ratio < 1:
            raise PrlmError(f"warmup_ratio must be in [0, 1) (a share of the steps), got {self.warmup_ratio}")

    def _check_lora(self) -> None:
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise PrlmError(f"lora_r must be >= 1 and lora_alpha > 0, got r={self.lora_r}, alpha={self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise PrlmError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}; e.g. --lora-dropout 0.1")
        if not self.lora_target_modules:
            raise PrlmError("lora_target is empty: use all-linear, or module names such as q_proj,v_proj")

    @property
    def lora_target_modules(self) -> str | list[str]:
        """PEFT's `target_modules`: 'all-linear' as it is, else the list of names."""
        if self.lora_target.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.lora_target.split(",") if name.strip()]

    def _check_warmup_share_of(self, earlier_config: Path) -> None:
        """'unseen' means unseen by *that* warm-up: its run must have split the questions the same way."""
        import json

        if not earlier_config.is_file():
            raise PrlmError(f"grpo_questions 'unseen' with warmup_from needs the warm-up run's {earlier_config} "
                            "to know which questions it trained on; use --grpo-questions all, or a run folder's "
                            "sft-model")
        earlier = json.loads(earlier_config.read_text())
        if earlier.get("warmup_share", 1.0) != self.warmup_share:
            raise PrlmError(f"the warm-up in {self.warmup_from} trained on warmup_share "
                            f"{earlier.get('warmup_share', 1.0)}, not {self.warmup_share}: pass "
                            f"--warmup-share {earlier.get('warmup_share', 1.0)} so 'unseen' means unseen by it")

    @property
    def metric_list(self) -> list[str]:
        return [m.strip() for m in self.accuracy_metrics.split(",") if m.strip()]
