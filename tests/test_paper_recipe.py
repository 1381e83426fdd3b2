"""The authors' recipe (docs/paper-recipe.md): the options it needs, and the paper recipes checked against
the authors' release without a GPU or a model: the exact TRL GRPOConfig each one renders, field by field."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from helpers import R1_DISTILL_TEMPLATE
from prlm import PrlmError
from prlm.answers import parse_completion
from prlm.data import get_task
from prlm.evaluation import ROUGE_KEYS, check_rouge_choice, lamp_mean, rouge, score_predictions
from prlm.options import build_config, load_yaml
from prlm.pipeline import EvalConfig
from prlm.prompts import AUTHORS_SYSTEM_PROMPT, build_prompt
from prlm.reward.format import FormatReward
from prlm.reward.model import RewardTrainConfig, _training_pairs, split_random
from prlm.reward.personalization import PersonalizationReward
from prlm.training.config import TrainConfig
from prlm.training.grpo import grpo_kwargs, lora_config, reward_functions, reward_weights

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
LAMP_TASKS = ("4", "5", "7")
HAS_AUTHORS_ROUGE = all(importlib.util.find_spec(m) for m in ("jieba", "rouge_chinese"))
needs_authors_rouge = pytest.mark.skipif(not HAS_AUTHORS_ROUGE, reason="jieba and rouge-chinese are not installed "
                                                                       "(pip install 'prlm[paper-rouge]')")

# The authors' GRPO settings, from ke-01/PrLM (commit 4d86698),
# Model_Train/recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/config_lamp{4,5,7}.yaml (the three files differ only in
# dataset, output folder and the task's reward names), as the GRPOConfig field each one sets in TRL 1.16.
AUTHORS_GRPO = {
    "bf16": True,                                       # line 13
    "use_vllm": True,                                   # line 14
    "gradient_accumulation_steps": 1,                   # line 18
    "gradient_checkpointing": True,                     # line 19
    "learning_rate": 1.0e-06,                           # line 24
    "logging_steps": 1,                                 # line 28
    "lr_scheduler_type": "cosine_with_min_lr",          # line 30
    "lr_scheduler_kwargs": {"min_lr_rate": 0.1},        # lines 31-32
    "max_completion_length": 768,                       # line 34
    "max_steps": -1,                                    # line 35
    "num_generations": 4,                               # line 36
    "num_train_epochs": 5,                              # line 37
    "per_device_train_batch_size": 4,                   # line 41 (completions; with G = 4: one prompt a step)
    "reward_weights": [1.0, 0.1, 0.1],                  # lines 51-56 (1.0, 0.1, 0.1, 0, 0: the 0-weight terms
                                                        # all_format and penalty_invalid are left out)
    "save_total_limit": 5,                              # line 58
    "seed": 42,                                         # line 59
    "temperature": 0.7,                                 # line 60
    "warmup_steps": 0.1,                                # line 61 (warmup_ratio; transformers 5 reads < 1 as a share)
    # Not in their YAML: the defaults of the TRL they ran (<= 0.15, which still had `vllm_device`, line 15).
    "beta": 0.04,
    "epsilon": 0.2,
    "loss_type": "grpo",                                # the per-sequence mean of that TRL's loss
    "top_p": 1.0,
    "num_iterations": 1,
}
# Their nested `peft:` block (lines 64-70), as peft's LoraConfig.
AUTHORS_LORA = {"r": 16, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": "all-linear"}


def _train(path: Path) -> TrainConfig:
    return build_config(TrainConfig, load_yaml(path), source=str(path))


def _render_grpo_config(cfg: TrainConfig):
    """The GRPOConfig `prlm train` builds for `cfg` (build_trainer's `grpo_args(cfg, reward_weights(cfg))`; no model
    is loaded). transformers refuses bf16 without a GPU: the two device arguments are swapped for the rendering
    only, and checked as they are passed."""
    from trl import GRPOConfig

    kwargs = grpo_kwargs(cfg)
    assert kwargs["bf16"] and not kwargs["use_cpu"]
    args = GRPOConfig(**{**kwargs, "bf16": False, "use_cpu": True}, reward_weights=reward_weights(cfg))
    return args, kwargs


@pytest.mark.parametrize("n", LAMP_TASKS)
def test_paper_recipe_renders_the_authors_grpo_config(n):
    cfg = _train(CONFIGS / f"lamp{n}-gpu-paper.yaml")
    args, kwargs = _render_grpo_config(cfg)
    rendered = {key: getattr(args, key) for key in AUTHORS_GRPO}
    rendered["bf16"] = kwargs["bf16"]
    rendered["lr_scheduler_type"] = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    assert rendered == AUTHORS_GRPO
    # What those settings come to: one prompt a step, 2,500 steps, 250 of warm-up, the floor at 0.1 of the peak.
    assert args.generation_batch_size // args.num_generations == 1 and args.steps_per_generation == 1
    assert cfg.limit == 500 and cfg.limit * args.num_train_epochs == 2500
    assert args.get_warmup_steps(2500) == 250
    assert args.use_vllm and args.vllm_mode == "colocate"


@pytest.mark.parametrize("n", LAMP_TASKS)
def test_paper_recipe_has_the_authors_lora_block_prompt_and_rewards(n):
    cfg = _train(CONFIGS / f"lamp{n}-gpu-paper.yaml")
    lora = lora_config(cfg)
    assert {key: getattr(lora, key) for key in AUTHORS_LORA} == AUTHORS_LORA
    assert cfg.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" and (cfg.retriever, cfg.k) == ("dense", 5)
    assert cfg.encoder == "BAAI/bge-base-en-v1.5" and cfg.max_prompt_tokens == 512
    assert (cfg.prompt, cfg.format_reward, cfg.rouge) == ("authors", "authors", "authors")
    # Only their LaMP-4 personalization reward gives -10 (rewards.py, rag_person_reward_4, lines 323-326).
    assert cfg.empty_answer_penalty == (-10.0 if n == "4" else 0.0)


def test_paper_recipe_schedule_floors_the_learning_rate_at_a_tenth():
    import torch
    from transformers import get_scheduler

    args, _ = _render_grpo_config(_train(CONFIGS / "lamp4-gpu-paper.yaml"))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    schedule = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(2500),
                             num_training_steps=2500, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    rates = []
    for _ in range(2500):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0 and rates[250] == pytest.approx(1e-6)
    assert min(rates[250:]) == pytest.approx(1e-7, rel=1e-3) and rates[-1] == pytest.approx(1e-7, rel=1e-3)


@pytest.mark.parametrize("n", LAMP_TASKS)
def test_paper_eval_recipe_is_the_authors_evaluation(n):
    values = load_yaml(CONFIGS / f"lamp{n}-gpu-paper-eval.yaml")
    # generate.py: cutoff_len 3000 (line 48), max_new_tokens 768 (line 46), temperature 0, no system prompt.
    assert values["max_prompt_tokens"] == 3000 and values["max_new_tokens"] == 768
    assert values["temperature"] == 0.0 and values["force_answer_tokens"] == 0
    assert values["prompt"] == "authors-user" and values["rouge"] == "authors"
    if HAS_AUTHORS_ROUGE:
        cfg = build_config(EvalConfig, values)
        train = _train(CONFIGS / f"lamp{n}-gpu-paper.yaml")
        assert cfg.model == str(Path(train.out) / "final") and cfg.task == train.task


def test_paper_reward_model_recipe_is_the_authors_split():
    cfg = build_config(RewardTrainConfig, load_yaml(CONFIGS / "rm-train-bert-base-paper.yaml"))
    # train_bert.py: bert-base-uncased, batch 64, lr 5e-5, 3 epochs, 512 tokens (lines 10-14), a random 90/10
    # split (line 87), the last epoch saved.
    assert (cfg.backbone, cfg.batch_size, cfg.learning_rate, cfg.epochs, cfg.max_length) == (
        "bert-base-uncased", 64, 5e-5, 3.0, 512)
    assert (cfg.split, cfg.val_fraction, cfg.select_epoch, cfg.seed) == ("random", 0.1, False, 42)


@pytest.mark.parametrize("n", LAMP_TASKS)
def test_recommended_recipe_takes_the_floor_and_the_lora_block_and_lists_its_departures(n):
    path = CONFIGS / f"lamp{n}-gpu-train.yaml"
    cfg = _train(path)
    assert (cfg.lr_scheduler_type, cfg.min_lr_rate) == ("cosine_with_min_lr", 0.1)
    assert {key: getattr(lora_config(cfg), key) for key in AUTHORS_LORA} == AUTHORS_LORA
    assert grpo_kwargs(cfg)["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    head = path.read_text().split("\ntask:")[0]
    assert "docs/paper-recipe.md" in head and f"lamp{n}-gpu-paper.yaml" in head
    for departure in ("8 prompts a step", "beta 0", "prompt", "format reward", "reward model", "ROUGE",
                      "answer forcing"):
        assert departure in head, departure


# --- the options, one by one ------------------------------------------------------------------------------------

def _r1_with_system(policy_tokenizer):
    tokenizer = copy.deepcopy(policy_tokenizer)
    system = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}"
              "{% endfor %}")
    tokenizer.chat_template = R1_DISTILL_TEMPLATE.replace("{{ bos_token }}", "{{ bos_token }}" + system)
    return tokenizer


def _lamp4_question():
    task = get_task("LaMP-4")
    entries = [{"id": str(i), "text": f"article body number {i} " * 30, "title": f"Past headline {i}", "date": ""}
               for i in range(5)]
    return task, task.input_prefix + "Rivers carry more sediment after storms, researchers found.", entries


def test_authors_prompt_has_their_system_prompt_entries_and_answer_format(policy_tokenizer):
    tokenizer = _r1_with_system(policy_tokenizer)
    task, text, entries = _lamp4_question()
    prompt = build_prompt(task, text, entries, "prlm", tokenizer, 512, style="authors")
    assert prompt.text.startswith(tokenizer.bos_token + AUTHORS_SYSTEM_PROMPT)
    assert prompt.user.startswith("The historical profiles are as follows:\n'text': 'article body number 0")
    assert "' 'title': 'Past headline 0'\n" in prompt.user
    assert "{'title': 'generated title'} without explanation" in prompt.user
    assert prompt.user.endswith("'text': 'Rivers carry more sediment after storms, researchers found.' 'title':")
    assert prompt.text.endswith("<｜Assistant｜><think>\n") and prompt.num_tokens <= 512
    assert 1 <= prompt.entries_used <= 5
    bare = build_prompt(task, text, entries, "prlm", tokenizer, 512, style="authors-user")
    assert AUTHORS_SYSTEM_PROMPT not in bare.text and bare.user.startswith("The historical profiles")
    own = build_prompt(task, text, entries, "prlm", tokenizer, 512)
    assert AUTHORS_SYSTEM_PROMPT not in own.text and "<answer>" in own.user


def test_authors_prompt_on_lamp7_asks_for_a_keyed_tweet(policy_tokenizer):
    task = get_task("LaMP-7")
    entries = [{"id": "1", "text": "old tweet about rain", "date": ""}]
    prompt = build_prompt(task, task.input_prefix + "new tweet", entries, "prlm", policy_tokenizer, 512,
                          style="authors")
    assert prompt.user == ("The historical tweets are as follows:\n'tweet': 'old tweet about rain'\n\nBased on the "
                           "style pattern of the historical tweets provided, please paraphrase the user's input tweet "
                           "without any explanation before or after it.\nPlease generate it in the following format: "
                           "{'tweet': 'generated tweet'} without explanation, and use only English.\nnew tweet")


def test_prompt_style_is_checked_before_work():
    with pytest.raises(PrlmError, match="prompt='author' is not valid"):
        build_config(TrainConfig, {"data": "d", "out": "o", "prompt": "author", "w_pers": 0})
    with pytest.raises(PrlmError, match="prompt='x'"):
        build_config(EvalConfig, {"data": "d", "out": "o", "prompt": "x"})


@pytest.mark.parametrize("completion, answer", [
    ("\nthe user writes short titles\n</think>\n<answer>\n{'title': 'Obama's plan works'}\n</answer>",
     "Obama's plan works"),
    ('\nreasoning\n</think>\n<answer>{"title": "Double quoted"}</answer>', "Double quoted"),
    ("\nreasoning\n</think>\n\n{'tweet': 'no answer tags, still keyed'}", "no answer tags, still keyed"),
    ("\nreasoning\n</think>\n\nplain text after the reasoning", ""),
    ("\nreasoning\n</think>\n<answer>Plain answer</answer>", "Plain answer"),
])
def test_the_extractor_reads_the_authors_keyed_answer(completion, answer):
    assert parse_completion(completion, "prlm", prefill="<think>").answer == answer


def test_authors_format_reward_pays_for_a_closed_reasoning_line_anywhere():
    authors, own = FormatReward(style="authors"), FormatReward()
    completions = ["\nreasons\n</think>\nno answer tags at all", "reasons</think><answer>x</answer>",
                   "\nreasons\n</think>\n<answer>\nTitle\n</answer>", "no reasoning close at all"]
    assert authors(None, completions) == [1.0, 0.0, 1.0, 0.0]
    assert own(None, completions) == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(PrlmError, match="format_reward='strict'"):
        FormatReward(style="strict")


def test_empty_answer_penalty_replaces_the_score_of_empty_and_placeholder_answers():
    reward = PersonalizationReward("no-model-needed", penalty=-10.0)
    completions = ["\nr\n</think>\n<answer></answer>", "\nr\n</think>\n<answer>{'title': 'generated title'}</answer>",
                   "\nr\n</think>\n\n{'title': 'generated title'}"]
    # Every answer here is penalized, so the reward model is never loaded.
    assert reward(None, completions, input=["x"] * 3) == [-10.0, -10.0, -10.0]
    assert reward._rm is None


def test_train_config_passes_its_reward_options_to_the_terms(tmp_path):
    rm = tmp_path / "rm"
    rm.mkdir()
    from prlm.reward.model import RM_FORMAT

    (rm / "prlm_rm_config.json").write_text(json.dumps({"format": RM_FORMAT, "backbone": "minilm", "max_length": 64,
                                                        "context_entries": 0, "model_type": "bert"}))
    cfg = build_config(TrainConfig, {"data": "d", "out": "o", "reward_model": str(rm), "format_reward": "authors",
                                     "empty_answer_penalty": -10, "report_to": "none"})
    (accuracy, fmt, personal), weights = reward_functions(cfg)
    assert fmt.style == "authors" and personal.penalty == -10.0 and accuracy.rouge == "rouge-score"
    assert weights == [1.0, 0.1, 0.1]


@pytest.mark.parametrize("values, message", [
    ({"lr_scheduler_type": "cosine_with_min_lr"}, "needs min_lr_rate in \\(0, 1\\)"),
    ({"lr_scheduler_type": "cosine", "min_lr_rate": 0.1}, "not of 'cosine'"),
    ({"max_steps": 0, "epochs": 0}, "set epochs > 0"),
    ({"lora_dropout": 1.0}, "lora_dropout must be in \\[0, 1\\)"),
    ({"lora_target": " , "}, "lora_target is empty"),
    ({"format_reward": "strict"}, "format_reward='strict'"),
    ({"rouge": "lamp"}, "rouge='lamp' is not valid"),
])
def test_train_config_refuses_schedule_lora_and_reward_mistakes(values, message):
    with pytest.raises(PrlmError, match=message):
        build_config(TrainConfig, {"data": "d", "out": "o", "w_pers": 0, "report_to": "none", **values})


def test_epochs_reach_trl_when_max_steps_is_zero():
    cfg = build_config(TrainConfig, {"data": "d", "out": "o", "w_pers": 0, "report_to": "none", "max_steps": 0,
                                     "epochs": 5, "lora": True, "lora_target": "q_proj, v_proj"})
    kwargs = grpo_kwargs(cfg)
    assert kwargs["max_steps"] == -1 and kwargs["num_train_epochs"] == 5 and kwargs["lr_scheduler_kwargs"] is None
    assert lora_config(cfg).target_modules == {"q_proj", "v_proj"}


# --- the reward model's random split ---------------------------------------------------------------------------

def _pairs(n: int, users: int = 4) -> list[dict]:
    return [{"id": f"q{i}", "pair_id": f"p{i}", "user_id": f"u{i % users}", "input": f"in {i}", "chosen": "a",
             "rejected": "b", "kind": "rag-vs-no-profile"} for i in range(n)]


def test_split_random_is_a_seeded_share_of_all_pairs_across_users():
    rows = _pairs(50)
    parts = split_random(rows, 0.1, seed=42)
    assert len(parts["validation"]) == 5 and len(parts["train"]) == 45 and parts["report"] == []
    assert {r["id"] for r in parts["train"]} | {r["id"] for r in parts["validation"]} == {r["id"] for r in rows}
    assert split_random(rows, 0.1, seed=42) == parts and split_random(rows, 0.1, seed=1) != parts
    assert {r["user_id"] for r in parts["validation"]} & {r["user_id"] for r in parts["train"]}  # users cross


def test_reward_train_config_split_random_trains_on_ninety_percent(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in _pairs(40)))
    cfg = build_config(RewardTrainConfig, {"pairs": str(pairs), "out": str(tmp_path / "rm"), "split": "random"})
    _, train, validation, report = _training_pairs(cfg)
    assert (len(train), len(validation), len(report)) == (36, 4, 0)
    by_users = build_config(RewardTrainConfig, {"pairs": str(pairs), "out": str(tmp_path / "rm")})
    assert len(_training_pairs(by_users)[1]) != 36  # the default splits by user
    with pytest.raises(PrlmError, match="split random has no held-out users"):
        build_config(RewardTrainConfig, {"pairs": "p", "out": "o", "split": "random", "role": "judge"})
    with pytest.raises(PrlmError, match="split='pairs' is not valid"):
        build_config(RewardTrainConfig, {"pairs": "p", "out": "o", "split": "pairs"})


# --- ROUGE choices ------------------------------------------------------------------------------------------------

def test_lamp_mean_is_the_median_of_seeded_bootstrap_means():
    import numpy as np

    values = list(np.random.default_rng(0).random(60))
    idx = np.random.RandomState(7)
    means = [np.mean(np.asarray(values)[idx.choice(np.arange(60), size=60)]) for _ in range(1000)]
    assert lamp_mean(values, seed=7) == pytest.approx(float(np.percentile(means, 50)))
    assert lamp_mean(values, seed=7) != pytest.approx(float(np.mean(values)), abs=1e-9)
    state = np.random.get_state()
    lamp_mean(values, seed=3)
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global generator is left as it was


def test_score_predictions_reports_lamp_means_on_the_same_per_example_scores():
    words = "rivers rise in the north after storms hit the coast".split()
    preds = {str(i): " ".join(words[i % 5: i % 5 + 2 + i % 4]) for i in range(20)}
    golds = {str(i): " ".join(words[i % 3: i % 3 + 4]) for i in range(20)}
    per_default, means_default = score_predictions(preds, golds, with_meteor=False)
    per_lamp, means_lamp = score_predictions(preds, golds, with_meteor=False, how="lamp", seed=0)
    assert per_lamp == per_default
    for key in ROUGE_KEYS:
        assert means_lamp[key] == pytest.approx(lamp_mean([m[key] for m in per_default.values()], seed=0))
    assert means_lamp != means_default


@needs_authors_rouge
def test_authors_rouge_lowercases_and_counts_jieba_tokens():
    # Their ROUGE lower-cases both texts and counts punctuation as tokens; rouge-score does neither.
    assert rouge("The Economy Grows", "the economy grows", "authors")["rouge1"] == pytest.approx(1.0, abs=1e-6)
    assert rouge("", "the economy grows", "authors") == {key: 0.0 for key in ROUGE_KEYS}
    theirs = rouge("U.S. economy grows", "U.S. economy is growing", "authors")
    ours = rouge("U.S. economy grows", "U.S. economy is growing")
    assert theirs["rouge1"] != pytest.approx(ours["rouge1"])


def test_unknown_rouge_choice_is_refused_with_the_choices():
    with pytest.raises(PrlmError, match="use one of: rouge-score, lamp, authors"):
        check_rouge_choice("rouge", "rouge_chinese")
    with pytest.raises(PrlmError, match="rouge='x'"):
        build_config(EvalConfig, {"data": "d", "out": "o", "rouge": "x"})
