"""The LaMP and GPU recipes, dry-run: no GPU and no hub here, so each recipe is
validated as a config, its prompt is built with the paper's policy's chat
template, and the arguments handed to TRL's GRPOConfig are checked, without
loading any model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from helpers import R1_DISTILL_TEMPLATE
from prlm.data import get_task
from prlm.options import build_config, load_yaml
from prlm.pipeline import EvalConfig
from prlm.prompts import build_prompt
from prlm.reward.pairs import PairsConfig
from prlm.study import build_stages, load_study_config
from prlm.training.config import TrainConfig
from prlm.training.grpo import grpo_kwargs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GPU_TRAIN = sorted(CONFIGS.glob("lamp*-gpu-train.yaml")) + [CONFIGS / "gpu-train.yaml"]
LAMP_TASKS = ("4", "5", "7")

# The authors' settings (PrLM, arXiv 2508.07342; their release's config_lamp4.yaml) that prlm's recommended
# GPU recipes keep; where they depart, and the authors' run itself, are tests/test_paper_recipe.py's.
POLICY = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
PAPER = dict(model=POLICY, retriever="dense", encoder="BAAI/bge-base-en-v1.5", k=5, num_generations=4,
             learning_rate=1e-6, lr_scheduler_type="cosine_with_min_lr", min_lr_rate=0.1, warmup_ratio=0.1,
             temperature=0.7, max_prompt_tokens=512, max_completion_length=768, lora=True, lora_r=16,
             lora_alpha=16, lora_dropout=0.1, loss_type="grpo", w_acc=1.0, w_fmt=0.1, w_pers=0.1, limit=500)


def _train_config(path: Path) -> TrainConfig:
    return build_config(TrainConfig, load_yaml(path), source=str(path))


def test_every_lamp_task_has_its_recipes():
    for n in LAMP_TASKS:
        for kind in ("cpu", "gpu-train", "gpu-eval", "gpu-rm-pairs", "gpu-paper", "gpu-paper-eval"):
            assert (CONFIGS / f"lamp{n}-{kind}.yaml").is_file()


@pytest.mark.parametrize("path", GPU_TRAIN, ids=lambda p: p.name)
def test_gpu_train_recipe_is_the_papers_setup(path):
    cfg = _train_config(path)
    for key, value in PAPER.items():
        assert getattr(cfg, key) == value, key
    assert cfg.use_vllm and cfg.bf16 and not cfg.use_cpu and cfg.reward_model
    assert not cfg.uses_prefix_sharing  # GPUs keep TRL's log-prob pass (docs/gpu/README.md)


@pytest.mark.parametrize("path", GPU_TRAIN, ids=lambda p: p.name)
def test_trl_gets_the_papers_arguments(path):
    from trl import GRPOConfig

    cfg = _train_config(path)
    kwargs = grpo_kwargs(cfg)
    assert kwargs["bf16"] and not kwargs["use_cpu"] and kwargs["use_vllm"] and kwargs["vllm_mode"] == "colocate"
    # transformers refuses bf16 without a GPU: the two device arguments are swapped for
    # the dry run only; TRL validates every other argument as the GPU run would.
    args = GRPOConfig(**{**kwargs, "bf16": False, "use_cpu": True})
    assert args.num_generations == 4 and args.learning_rate == 1e-6 and args.temperature == 0.7
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.get_warmup_steps(cfg.max_steps) == cfg.max_steps // 10
    assert args.max_completion_length == 768 and args.loss_type == "grpo" and args.beta == 0.0
    assert args.per_device_train_batch_size == cfg.prompts_per_step * 4
    assert args.use_vllm and args.vllm_mode == "colocate"


def _question(task) -> tuple[str, list[dict]]:
    entries = [{"id": str(i), **{f: f"{f} of past item {i} " * 6 for f in task.entry_fields}} for i in range(5)]
    return task.input_prefix + "Researchers found that rivers carry more sediment after storms. " * 8, entries


@pytest.mark.parametrize("path", GPU_TRAIN, ids=lambda p: p.name)
def test_gpu_recipe_prompt_with_the_policys_template(path, policy_tokenizer):
    cfg = _train_config(path)
    tokenizer = copy.deepcopy(policy_tokenizer)
    tokenizer.chat_template = R1_DISTILL_TEMPLATE
    task = get_task(cfg.task)
    text, entries = _question(task)
    prompt = build_prompt(task, text, entries[:cfg.k], "prlm", tokenizer, cfg.max_prompt_tokens)
    assert prompt.text.endswith("<｜Assistant｜><think>\n")  # the template's <think>, and no second one
    assert "<think>\n<think>" not in prompt.text and prompt.prefill == "<think>"
    assert prompt.num_tokens <= cfg.max_prompt_tokens and prompt.entries_used >= 1


@pytest.mark.parametrize("n", LAMP_TASKS)
def test_lamp_gpu_eval_and_pairs_recipes_match_training(n):
    train = _train_config(CONFIGS / f"lamp{n}-gpu-train.yaml")
    evaluation = build_config(EvalConfig, load_yaml(CONFIGS / f"lamp{n}-gpu-eval.yaml"))
    pairs = build_config(PairsConfig, load_yaml(CONFIGS / f"lamp{n}-gpu-rm-pairs.yaml"))
    for cfg in (evaluation, pairs):
        for key in ("task", "data", "retriever", "encoder", "k", "max_prompt_tokens"):
            assert getattr(cfg, key) == getattr(train, key), key
    assert evaluation.split == "dev" and evaluation.model == str(Path(train.out) / "final")
    assert pairs.model == train.model and pairs.split == "train"
    assert Path(pairs.out).parent == Path(train.reward_model).parent  # pairs beside the reward model they train
    assert get_task(train.task).name == f"LaMP-{n}"


@pytest.mark.parametrize("n", LAMP_TASKS)
def test_lamp_cpu_recipe_validates_and_keeps_the_papers_choices(n):
    cfg = load_study_config(str(CONFIGS / f"lamp{n}-cpu.yaml"))
    stages = {stage.name: stage for stage in build_stages(cfg)}  # validates every stage's config
    assert {"rm-pairs", "rm-train", "train", "eval-prlm"} <= set(stages)
    train = stages["train"].config
    for key in ("retriever", "k", "num_generations", "learning_rate", "lr_scheduler_type", "min_lr_rate",
                "warmup_ratio", "temperature", "max_prompt_tokens", "lora", "lora_r", "lora_alpha", "lora_dropout",
                "loss_type", "w_pers", "limit"):
        assert train[key] == PAPER[key], key
    assert stages["eval-prlm"].config["split"] == "dev"  # the test split is for the final submission only


@pytest.mark.parametrize("name", ["accelerate-multi-gpu.yaml", "accelerate-zero2.yaml", "accelerate-zero3.yaml"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert config.mixed_precision == "bf16" and not config.use_cpu
    if "zero" in name:
        assert config.deepspeed_config["zero_stage"] == int(name[len("accelerate-zero")])
