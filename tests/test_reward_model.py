"""The reward model: loss, by-user split, training, save/load round trips, evaluation, load errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from prlm import PrlmError
from prlm.cli import build_parser, main
from prlm.reward.model import (
    RM_CONFIG_NAME,
    RewardTrainConfig,
    bradley_terry_loss,
    evaluate_pairs,
    load_reward_model,
    pairwise_metrics,
    parse_kind_weights,
    save_reward_model,
    split_by_user,
    train_reward_model,
    weight_kinds,
)
from prlm.reward.users import UserPartition


def tiny_bert(folder, hidden: int = 32, head: bool = False, seed: int = 0):
    """A tiny random BERT with the embedded MiniLM tokenizer, saved in `folder`; returns (model, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    from prlm.models import resolve_encoder_path

    tok = AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128, num_labels=1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if head else BertModel(config)
    if folder is not None:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return model, tok


def make_tiny_rm(folder, backbone: str = "tiny-bert", context_entries: int = 0, max_length: int = 64):
    """A reward model checkpoint (untrained tiny BERT head) written with the project's saver."""
    model, tok = tiny_bert(None, head=True)
    save_reward_model(folder, model, tok, {"backbone": backbone, "max_length": max_length,
                                           "context_entries": context_entries})
    return str(folder)


def signal_pairs(n_users: int = 20, per_user: int = 2) -> list[dict]:
    """Pairs whose chosen answer always says 'personal' and rejected 'generic': learnable."""
    rows = []
    for u in range(n_users):
        for j in range(per_user):
            rows.append({"pair_id": f"q{u}-{j}:k", "id": f"q{u}-{j}", "user_id": f"u{u}", "kind": "rag-vs-no-profile",
                         "input": f"commit message number {u} {j} about files",
                         "chosen": f"personal subject {j}", "rejected": f"generic subject {j}",
                         "context": [f"entry {u} a", f"entry {u} b"]})
    return rows


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone):
    """One small training run shared by the tests below: (config, result, pairs rows)."""
    tmp = tmp_path_factory.mktemp("rm_train")
    rows = signal_pairs()
    cfg = RewardTrainConfig(pairs=write_pairs(tmp / "pairs.jsonl", rows), out=str(tmp / "rm"), backbone=tiny_backbone,
                      max_length=32, batch_size=8, learning_rate=2e-3, epochs=3, val_fraction=0.2, device="cpu",
                      kind_weights="rag-vs-no-profile=1")
    result = train_reward_model(cfg, progress=False)
    return cfg, result, rows


# --- loss --------------------------------------------------------------------

def test_bradley_terry_loss_on_hand_computed_values():
    # diffs 1, 0, -2: -log sigmoid(d) = log(1 + e^-d) = 0.313262, 0.693147, 2.126928; mean 1.044446
    loss = bradley_terry_loss([2.0, 0.0, -1.0], [1.0, 0.0, 1.0])
    assert float(loss) == pytest.approx((math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(2))) / 3)
    assert float(loss) == pytest.approx(1.044446, abs=1e-6)


def test_trainer_minimizes_the_same_loss(tmp_path, tiny_backbone):
    """TRL's RewardTrainer (through our subclass) computes exactly -log sigmoid(s+ - s-) on its batch layout."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig

    from prlm.reward.model import _pair_trainer_class

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1)
    data = Dataset.from_dict({"chosen_ids": [[101, 7, 102]], "rejected_ids": [[101, 8, 102]]})
    trainer = _pair_trainer_class()(model=model, args=RewardConfig(output_dir=str(tmp_path), use_cpu=True,
                                                                   report_to=[], bf16=False),
                                    train_dataset=data, processing_class=tok)

    class Fixed(torch.nn.Module):
        def forward(self, **inputs):  # first half of the batch = chosen, second half = rejected
            return type("Out", (), {"logits": torch.tensor([[2.0], [0.0], [-1.0], [1.0], [0.0], [1.0]])})()

    loss = trainer.compute_loss(Fixed(), {"input_ids": torch.zeros(6, 3, dtype=torch.long),
                                          "attention_mask": torch.ones(6, 3, dtype=torch.long)})
    assert float(loss) == pytest.approx(1.044446, abs=1e-6)


# --- split -------------------------------------------------------------------

def test_split_by_user_is_disjoint_deterministic_and_stable():
    rows = [{"user_id": f"u{u}", "id": f"q{u}-{j}"} for u in range(60) for j in range(3)]
    partition = UserPartition(validation_share=0.1, held_out_share=0.45)
    parts = split_by_user(rows, partition)
    users = {name: {r["user_id"] for r in part} for name, part in parts.items()}
    assert not users["train"] & users["validation"] and not users["train"] & users["report"]
    assert not users["validation"] & users["report"] and sum(map(len, parts.values())) == len(rows)
    assert all(users.values())
    assert split_by_user(rows, partition) == parts
    # a user's part depends on its id alone: dropping other users moves nobody
    fewer = split_by_user(rows[::2][:40], partition)
    for name, part in fewer.items():
        assert {r["user_id"] for r in part} <= users[name]
    # the judge trains on the reward model's reported users and is reported on its training users
    judge = split_by_user(rows, partition, role="judge")
    assert judge["train"] == parts["report"] and judge["report"] == parts["train"]
    assert judge["validation"] == parts["validation"]


def test_kind_weights_subsample_and_repeat():
    assert parse_kind_weights("a=1, b=0.5,c=2") == {"a": 1.0, "b": 0.5, "c": 2.0}
    for bad in ("a", "a=x", "a=-1", "=1"):
        with pytest.raises(PrlmError, match="KIND=WEIGHT"):
            parse_kind_weights(bad)
    rows = [{"kind": k, "id": i} for k in ("a", "b", "c") for i in range(400)]
    out = weight_kinds(rows, {"b": 0.25, "c": 2})
    count = {k: sum(r["kind"] == k for r in out) for k in "abc"}
    assert count["a"] == 400 and count["c"] == 800 and 70 <= count["b"] <= 130
    assert weight_kinds(rows, {"b": 0.25, "c": 2}) == out  # deterministic


def test_pairwise_metrics_and_bootstrap_interval():
    m = pairwise_metrics([1.0, 2.0, 0.0, 3.0], [0.0, 1.0, 1.0, 1.0], samples=500)
    assert m["accuracy"] == 0.75 and m["margin"] == pytest.approx(0.75) and m["n"] == 4
    assert m["accuracy_ci"][0] <= 0.75 <= m["accuracy_ci"][1] and 0 <= m["accuracy_ci"][0]
    assert m["margin_ci"][0] <= 0.75 <= m["margin_ci"][1]
    assert m["ties"] == 0 and m["lower_or_keep"] == 0.75
    tied = pairwise_metrics([1.0, 2.0, 0.5], [1.0, 1.0, 1.0], samples=50)
    assert (tied["accuracy"] == pytest.approx(1 / 3) and tied["ties"] == 1
            and tied["lower_or_keep"] == pytest.approx(2 / 3))


# --- training, save and load ---------------------------------------------------

def test_training_reports_each_epoch_and_keeps_the_best(trained):
    cfg, result, rows = trained
    saved = json.loads((__import__("pathlib").Path(cfg.out) / RM_CONFIG_NAME).read_text())
    assert [e["epoch"] for e in saved["epochs"]] == [1.0, 2.0, 3.0]
    for e in saved["epochs"]:
        assert 0 <= e["val_accuracy"] <= 1 and e["val_margin"] is not None and e["val_loss"] > 0
    best = max(e["val_accuracy"] for e in saved["epochs"])
    assert saved["best_epoch"] in [e["epoch"] for e in saved["epochs"] if e["val_accuracy"] == best]
    assert saved["selection"]["accuracy"] == pytest.approx(best)  # the kept checkpoint is the best epoch
    assert saved["backbone"] == cfg.backbone and saved["max_length"] == 32 and saved["context_entries"] == 0
    parts = split_by_user(rows, cfg.partition)
    assert saved["pairs"] == {"total": 40, "train": len(parts["train"]), "validation": len(parts["validation"]),
                              "report": len(parts["report"])}
    assert saved["users"]["validation"] == sorted({r["user_id"] for r in parts["validation"]})
    assert saved["train_config"]["learning_rate"] == 2e-3 and saved["environment"]["versions"]["trl"]
    # the signal is learnable: the first epoch's validation loss is above the best epoch's
    assert min(e["val_loss"] for e in saved["epochs"]) < math.log(2)


def test_reported_accuracy_is_not_the_one_that_chose_the_epoch(trained):
    """Issue 12: the reported figure used to be the accuracy of the epoch chosen on those same pairs. Now the
    epoch is chosen on validation users and the reported accuracy is on users that did neither."""
    cfg, result, rows = trained
    saved = json.loads((__import__("pathlib").Path(cfg.out) / RM_CONFIG_NAME).read_text())
    reported = set(saved["users"]["report"])
    assert reported and saved["held_out"]["n"] == sum(r["user_id"] in reported for r in rows)
    assert not reported & set(saved["users"]["validation"]) and not reported & set(saved["users"]["train"])
    assert "validation" not in saved  # the old, optimistic figure is no longer written under a reportable name


def test_save_load_round_trip_reproduces_scores_and_metrics(trained, tmp_path):
    cfg, result, rows = trained
    rm = load_reward_model(cfg.out)
    assert rm.model.device.type == "cpu" and not rm.model.training
    held = split_by_user(rows, cfg.partition)["report"]
    again = evaluate_pairs(rm, held, batch_size=3)
    assert again["accuracy"] == pytest.approx(result["held_out"]["accuracy"])
    assert again["margin"] == pytest.approx(result["held_out"]["margin"], abs=1e-5)
    # re-saving and loading gives the very same scores
    copy = tmp_path / "copy"
    save_reward_model(copy, rm.model, rm.tokenizer, {k: v for k, v in rm.config.items()
                                                    if k not in ("format", "version", "model_type")})
    scores = rm.score(["an input"] * 2, ["personal a", "generic b"])
    assert load_reward_model(copy).score(["an input"] * 2, ["personal a", "generic b"]) == pytest.approx(scores)
    with pytest.raises(PrlmError, match="already exists"):
        save_reward_model(copy, rm.model, rm.tokenizer, {})


def test_batching_does_not_change_scores(trained):
    rm = load_reward_model(trained[0].out)
    inputs = [f"input {'long ' * i}" for i in range(7)]
    answers = [f"answer {i}" for i in range(7)]
    assert rm.score(inputs, answers, batch_size=2) == pytest.approx(rm.score(inputs, answers, batch_size=7), abs=1e-5)


def test_pairs_that_encode_the_same_are_not_trained_on(tmp_path, tiny_backbone):
    """The embedded MiniLM tokenizer is uncased: a case flip is no change to it, so such pairs are dropped."""
    rows = signal_pairs(n_users=20, per_user=1)
    rows += [{**r, "pair_id": r["pair_id"] + "-case", "kind": "casing", "chosen": "mingw: fix",
              "rejected": "Mingw: fix"}
             for r in rows]
    cfg = RewardTrainConfig(pairs=write_pairs(tmp_path / "p.jsonl", rows), out=str(tmp_path / "rm"),
                            backbone=tiny_backbone, max_length=32, batch_size=8, epochs=1, device="cpu")
    result = train_reward_model(cfg, progress=False)
    parts = split_by_user(rows, cfg.partition)
    casing = sum(r["kind"] == "casing" for r in parts["train"] + parts["validation"])
    assert result["dropped_identical_after_tokenization"] == {"casing": casing} and casing > 0
    assert result["pairs"]["train"] == len(parts["train"])  # counted before dropping: the file's pairs


def test_context_option_is_saved_and_required(tmp_path, tiny_backbone):
    rows = signal_pairs(n_users=4, per_user=1)
    cfg = RewardTrainConfig(pairs=write_pairs(tmp_path / "p.jsonl", rows), out=str(tmp_path / "rm"),
                      backbone=tiny_backbone, max_length=32, batch_size=4, epochs=1, context_entries=1, device="cpu")
    result = train_reward_model(cfg, progress=False)
    assert result["context_entries"] == 1
    rm = load_reward_model(cfg.out)
    assert rm.context_entries == 1
    ids = rm.encode(["an input"], ["an answer"], [["first entry", "second entry"]])[0]
    text = rm.tokenizer.decode(ids)
    assert "first entry" in text and "second entry" not in text and "[SEP]" in text
    with pytest.raises(PrlmError, match="profile entries in its context"):
        rm.score(["an input"], ["an answer"])
    for r in rows:
        r.pop("context")
    write_pairs(tmp_path / "p.jsonl", rows)
    with pytest.raises(PrlmError, match="has no 'context' entries"):
        train_reward_model(RewardTrainConfig(**{**cfg.__dict__, "overwrite": True}), progress=False)


# --- load errors ---------------------------------------------------------------

def test_not_a_checkpoint(tmp_path, tiny_backbone):
    with pytest.raises(PrlmError, match="not a reward model checkpoint"):
        load_reward_model(tmp_path)
    with pytest.raises(PrlmError, match="not a reward model checkpoint"):
        load_reward_model(tiny_backbone)  # a plain backbone, no prlm_rm_config.json


def test_backbone_mismatch_is_a_clear_error(tmp_path):
    path = make_tiny_rm(tmp_path / "rm", backbone="minilm")
    assert load_reward_model(path, backbone="minilm").config["backbone"] == "minilm"
    with pytest.raises(PrlmError, match="trained from backbone 'minilm', not 'bert-base-uncased'"):
        load_reward_model(path, backbone="bert-base-uncased")


def test_weights_of_another_backbone_are_a_clear_error(tmp_path):
    path = tmp_path / "rm"
    make_tiny_rm(path)
    other = tmp_path / "other"
    model, _ = tiny_bert(None, hidden=48, head=True)
    model.save_pretrained(other)
    # the config (hidden 32) with the weights of a hidden-48 model: shapes do not match
    shutil.copy(other / "model.safetensors", path / "model.safetensors")
    with pytest.raises(PrlmError) as err:
        load_reward_model(path)
    assert "weights do not fit its config" in str(err.value) or "wrong shape" in str(err.value)
    assert "\n" not in str(err.value)
    # a config.json of another model type than the checkpoint's prlm config says
    make_tiny_rm(tmp_path / "rm2")
    cfg = json.loads((tmp_path / "rm2" / RM_CONFIG_NAME).read_text())
    (tmp_path / "rm2" / RM_CONFIG_NAME).write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(PrlmError, match="mixes two checkpoints"):
        load_reward_model(tmp_path / "rm2")


def test_weights_missing_the_head_are_a_clear_error(tmp_path):
    path = tmp_path / "rm"
    make_tiny_rm(path)
    body, _ = tiny_bert(tmp_path / "body")  # a BertModel: no classifier weights
    shutil.copy(tmp_path / "body" / "model.safetensors", path / "model.safetensors")
    with pytest.raises(PrlmError, match="missing or of the wrong shape"):
        load_reward_model(path)


# --- CLI -----------------------------------------------------------------------

def test_rm_commands_have_help(capsys):
    for argv, flags in ((["rm", "--help"], ["pairs", "train", "eval", "score"]),
                        (["rm", "pairs", "--help"], ["--kinds", "--chunk-size", "--config", "--no-profile-run"]),
                        (["rm", "train", "--help"],
                         ["--backbone", "--max-length", "--context-entries", "--val-fraction"]),
                        (["rm", "eval", "--help"], ["--pairs", "--samples"]),
                        (["rm", "score", "--help"], ["--input", "--answer", "--file", "--penalty"])):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: prlm rm") and all(flag in out for flag in flags)


def test_train_config_from_yaml_and_flags(tmp_path):
    import yaml

    from prlm.options import config_from_args

    (tmp_path / "rm.yaml").write_text(yaml.safe_dump({"pairs": "p.jsonl", "out": "o", "learning_rate": 1e-4,
                                                      "epochs": 2}))
    args = build_parser().parse_args(["rm", "train", "--config", str(tmp_path / "rm.yaml"), "--epochs", "1"])
    cfg = config_from_args(RewardTrainConfig, args)
    assert (cfg.pairs, cfg.learning_rate, cfg.epochs, cfg.batch_size) == ("p.jsonl", 1e-4, 1.0, 64)
    with pytest.raises(PrlmError, match="val_fraction must be in"):
        RewardTrainConfig(pairs="p", out="o", val_fraction=1.0)


def test_eval_and_score_cli(trained, tmp_path, capsys):
    cfg, _, rows = trained
    assert main(["rm", "eval", "--model", cfg.out, "--pairs", cfg.pairs, "--samples", "200", "--users", "all",
                 "--out", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "40 pairs" in out and "pairwise accuracy" in out and "mean margin" in out
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["n"] == 40 and len(saved["per_pair"]) == 40 and len(saved["accuracy_ci"]) == 2
    assert main(["rm", "score", "--model", cfg.out, "--input", "a commit", "--answer", "personal fix"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert 0 < line["reward"] < 1 and line["reward"] == pytest.approx(1 / (1 + math.exp(-float(line["score"]))),
                                                                      abs=1e-3)
    (tmp_path / "in.jsonl").write_text(json.dumps({"input": "a", "answer": "personal x"}) + "\n"
                                       + json.dumps({"input": "a", "answer": "..."}) + "\n")
    assert main(["rm", "score", "--model", cfg.out, "--file", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "scored.jsonl"), "--penalty", "-1"]) == 0
    scored = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert scored[0]["score"] is not None and scored[1] == {"input": "a", "answer": "...", "score": None,
                                                            "reward": -1.0, "penalized": "no letters or digits"}
    assert main(["rm", "eval", "--model", cfg.out, "--pairs", cfg.pairs, "--backbone", "bert-base-uncased"]) == 2
    assert "not 'bert-base-uncased'" in capsys.readouterr().err
