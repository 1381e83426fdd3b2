"""Style pairs from real outputs, the user partition, the model-free style measure, the judge, `rm eval` rows."""

from __future__ import annotations

import json

import pytest

from helpers import write_lamp
from prlm import PrlmError
from prlm.cli import main
from prlm.reward.judge import area_prefix, first_letter_case, judge_rows, style_rows, style_summary, user_habit
from prlm.reward.style_pairs import (
    PREAMBLES,
    SIGN_OFFS,
    StylePairsConfig,
    build_style_pairs,
    flip_first_letter,
    with_preamble,
    with_sign_off,
)
from prlm.reward.users import UserPartition
from test_reward_model import make_tiny_rm

PREFIX = "Generate a subject line for the following commit message: "
AREAS = {"u0": "mingw", "u1": "t0014", "u2": "refs", "u3": "Docs", "u4": "odb", "u5": "ci"}


def commit_questions(n_users: int = 6, per_user: int = 2, profile_size: int = 4):
    """Commit-subject questions: each user writes '<area>: <verb> <topic>'; users 2i and 2i+1 get the same
    inputs (so their own other question is as near as the other user's)."""
    topics = ["parser crash", "index cache", "remote helper", "pack bitmap", "config parsing", "ref locking"]
    questions, golds = [], []
    for u in range(n_users):
        user, area = f"u{u}", AREAS.get(f"u{u}", f"area{u}")
        profile = [{"id": f"{user}-p{p}", "text": f"This body changes the {topics[p % len(topics)]} code.",
                    "title": f"{area}: tweak {topics[p % len(topics)]}", "date": f"2020-01-{p + 1:02d}"}
                   for p in range(profile_size)]
        for j in range(per_user):
            qid = f"q{u}-{j}"
            topic = topics[u // 2]
            questions.append({"id": qid, "user_id": user, "input": f"{PREFIX}Rework the {topic} handling.",
                              "profile": profile})
            golds.append({"id": qid, "output": f"{area}: rework {topic} handling, step {j}"})
    return questions, {"task": "commit-subject", "golds": golds}


@pytest.fixture()
def commit_data(tmp_path):
    questions, outputs = commit_questions()
    return write_lamp(tmp_path / "data", split="train", questions=questions, outputs=outputs)


# --- user partition ------------------------------------------------------------

def test_partition_is_a_hash_of_the_user_id():
    partition = UserPartition()
    groups = [partition.group(f"user-{i}") for i in range(400)]
    assert set(groups) == {"rm-train", "validation", "held-out"}
    assert groups == [UserPartition().group(f"user-{i}") for i in range(400)]  # same in every process
    share = {g: groups.count(g) / 400 for g in set(groups)}
    assert 0.05 < share["validation"] < 0.16 and 0.37 < share["held-out"] < 0.53
    assert UserPartition(salt="other").group("user-1") in ("rm-train", "validation", "held-out")
    with pytest.raises(PrlmError, match="no user to train on"):
        UserPartition(validation_share=0.5, held_out_share=0.5)


def test_reward_and_judge_never_share_a_training_user():
    partition = UserPartition()
    rows = [{"user_id": f"u{i}"} for i in range(200)]
    reward, judge = partition.split_rows(rows, "reward"), partition.split_rows(rows, "judge")
    users = lambda part: {r["user_id"] for r in part}  # noqa: E731
    assert not users(reward["train"]) & users(judge["train"])
    assert users(reward["report"]) == users(judge["train"]) and users(judge["report"]) == users(reward["train"])
    assert not users(reward["validation"]) & (users(reward["report"]) | users(judge["report"]))


# --- form perturbations ----------------------------------------------------------

def test_form_perturbations():
    assert flip_first_letter("mingw: fix") == "Mingw: fix" and flip_first_letter("Fix it") == "fix it"
    assert flip_first_letter("0-day fix") == ""  # nothing to flip
    pre = with_preamble("mingw: fix", "subject line", "q1", "eval")
    assert pre.endswith("mingw: fix") and pre != "mingw: fix"
    assert with_sign_off("mingw: fix", "q1", "eval").startswith("mingw: fix ")
    # the measured wordings are never trained on
    assert (not set(PREAMBLES["train"]) & set(PREAMBLES["eval"])
            and not set(SIGN_OFFS["train"]) & set(SIGN_OFFS["eval"]))


# --- style pairs ---------------------------------------------------------------------

def test_style_pairs_from_questions(commit_data, tmp_path):
    out = tmp_path / "pairs.jsonl"
    summary = build_style_pairs(StylePairsConfig(data=str(commit_data), split="train", k=2, negatives="any",
                                                 variant="eval", out=str(out)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["pairs"] == len(rows) == 12 * 4 and summary["by_kind"]["casing"] == 12
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
        assert r["chosen"].startswith(AREAS[r["user_id"]] + ":")  # the user's own real output
        assert len(r["context"]) == 2 and all(c.startswith(AREAS[r["user_id"]] + ":") for c in r["context"])
    for r in by_kind["own-vs-other-user"]:
        assert r["other_user_id"] != r["user_id"] and r["rejected"].startswith(AREAS[r["other_user_id"]] + ":")
        # the hard negative is about the same topic: the BM25-nearest input of another user
        assert r["rejected"].split(": ", 1)[1].split(",")[0] == r["chosen"].split(": ", 1)[1].split(",")[0]
    for r in by_kind["preamble"]:
        assert r["rejected"].endswith(r["chosen"]) and len(r["rejected"]) > len(r["chosen"])
    for r in by_kind["sign-off"]:
        assert r["rejected"].startswith(r["chosen"]) and len(r["rejected"]) > len(r["chosen"])


def test_style_pairs_from_profiles_never_put_the_answer_in_its_context(commit_data, tmp_path):
    out = tmp_path / "pairs.jsonl"
    build_style_pairs(StylePairsConfig(data=str(commit_data), split="train", k=8, kinds="own-vs-other-user",
                                       source="questions+profiles", negatives="any", out=str(out)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    from_profiles = [r for r in rows if "/profile/" in r["id"]]
    assert len(from_profiles) == 6 * 4  # every profile entry of every user is an own output
    for r in rows:
        assert r["chosen"] not in r["context"]
        assert r["input"].startswith(PREFIX)


def test_same_group_negatives_stay_in_the_group(commit_data, tmp_path):
    questions, outputs = commit_questions(n_users=12)
    data = write_lamp(tmp_path / "d12", split="train", questions=questions, outputs=outputs)
    out = tmp_path / "pairs.jsonl"
    partition = UserPartition()
    build_style_pairs(StylePairsConfig(data=str(data), kinds="own-vs-other-user", out=str(out)), partition)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(partition.group(r["other_user_id"]) == partition.group(r["user_id"]) for r in rows)


def test_style_pairs_config_errors(tmp_path):
    with pytest.raises(PrlmError, match="kinds"):
        StylePairsConfig(data="d", out="o", kinds="nope")
    with pytest.raises(PrlmError, match="users"):
        StylePairsConfig(data="d", out="o", users="everyone")
    with pytest.raises(PrlmError, match="out is required"):
        StylePairsConfig(data="d")


# --- model-free style measure --------------------------------------------------------

@pytest.mark.parametrize("text, prefix", [("mingw: fix build", "mingw"), ("t/helper: add test", "t/helper"),
                                          ("submodule--helper: x", "submodule--helper"), ("Fix: a b", "Fix"),
                                          ("Revert \"mingw: x\"", ""), ("Fix the bug", ""),
                                          ("The subject line is: mingw: x", ""), ("ci(windows): x", "ci(windows)")])
def test_area_prefix(text, prefix):
    assert area_prefix(text) == prefix


def test_casing_and_habit():
    assert first_letter_case("mingw: Fix it") == "upper" and first_letter_case("index: also hint") == "lower"
    assert first_letter_case("Add a thing") == "upper" and first_letter_case("123") == ""
    habit = user_habit(["a: fix one", "b: fix two", "c: Fix three four five six seven eight"])
    assert habit == {"case": "lower", "length_bucket": 0}


def test_style_rows_on_hand_examples():
    profile = [{"title": "mingw: fix the build"}, {"title": "mingw: avoid a leak"}]
    rows = style_rows([{"id": "q1", "user_id": "u", "answer": "mingw: add a flag", "gold": "mingw: add flag"},
                       {"id": "q2", "user_id": "u", "answer": "Add a flag to the build system of windows now",
                        "gold": "mingw: add flag"}],
                      {"q1": profile, "q2": profile})
    assert [r["prefix_match"] for r in rows] == [1.0, 0.0]
    assert [r["case_match"] for r in rows] == [1.0, 0.0] and [r["length_match"] for r in rows] == [1.0, 0.0]
    summary = style_summary(rows)
    assert summary["prefix_match"] == 0.5 and summary["prefix_match_gold_has_prefix"] == 0.5
    with pytest.raises(PrlmError, match="no question"):
        style_rows([{"id": "q9", "answer": "x", "gold": "y"}], {})


# --- judge ---------------------------------------------------------------------------------

def test_judge_scores_answers_with_the_profile_context(tmp_path):
    from prlm.data.lamp import Example
    from prlm.reward.model import load_reward_model

    path = make_tiny_rm(tmp_path / "judge", context_entries=2)
    cfg_file = tmp_path / "judge" / "prlm_rm_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "role": "judge", "task": "commit-subject"}))
    judge = load_reward_model(path)
    profile = [{"id": "p1", "text": "fix the parser", "title": "mingw: fix parser", "date": "2020-01-01"}]
    questions = {"q1": Example("q1", "u1", PREFIX + "fix the parser", profile)}
    rows = judge_rows(judge, [{"id": "q1", "answer": "mingw: fix it"}, {"id": "q1", "answer": ""}], questions)
    expected = judge.score([PREFIX + "fix the parser"], ["mingw: fix it"], [["mingw: fix parser"]])[0]
    assert rows[0]["judge_score"] == pytest.approx(expected) and 0 < rows[0]["judge_reward"] < 1
    assert rows[1]["judge_score"] is None and rows[1]["judge_reward"] == 0.0
    cfg_file.write_text(json.dumps({**cfg, "role": "reward"}))
    with pytest.raises(PrlmError, match="--role judge"):
        judge_rows(load_reward_model(path), [{"id": "q1", "answer": "x"}], questions)


# --- rm eval: unseen users and report rows ----------------------------------------------------

def test_eval_reports_unseen_users_per_kind(tmp_path, capsys):
    path = make_tiny_rm(tmp_path / "rm")
    cfg_file = tmp_path / "rm" / "prlm_rm_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "users": {"train": ["u0"], "validation": ["u1"], "report": []}}))
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"pair_id": f"q{u}-{kind}", "id": f"q{u}", "user_id": f"u{u}", "kind": kind, "input": "a commit",
             "chosen": "mingw: fix", "rejected": f"other {kind}", "split": "dev"}
            for u in range(4) for kind in ("gold-vs-other-user", "preamble")]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = tmp_path / "results" / "rows.json"
    assert main(["rm", "eval", "--model", path, "--pairs", str(pairs), "--samples", "50", "--data", "toy",
                 "--results", str(results)]) == 0
    assert "2 user(s) (unseen)" in capsys.readouterr().out
    written = json.loads(results.read_text())
    assert [r["pairs"] for r in written] == ["own-vs-other-user", "preamble"]
    for r in written:
        assert set(r) == {"data", "split", "pairs", "n", "accuracy", "lo", "hi", "model", "command"}
        assert r["n"] == 2 and r["data"] == "toy" and r["split"] == "dev" and r["model"] == "rm"
        assert r["lo"] <= r["accuracy"] <= r["hi"] and r["command"].startswith("prlm rm eval --model ")
    # every pair of a seen user: nothing to report
    cfg_file.write_text(json.dumps({**cfg, "users": {"train": ["u0", "u1", "u2"], "validation": ["u3"]}}))
    assert main(["rm", "eval", "--model", path, "--pairs", str(pairs)]) == 2
    assert "every pair belongs to a user the checkpoint trained on" in capsys.readouterr().err


def test_reward_contexts_match_the_training_pairs(commit_data, tmp_path):
    from prlm.data import load_split
    from prlm.reward.style_pairs import reward_contexts

    out = tmp_path / "pairs.jsonl"
    build_style_pairs(StylePairsConfig(data=str(commit_data), kinds="preamble", k=3, out=str(out)))
    rows = {json.loads(line)["id"]: json.loads(line) for line in out.read_text().splitlines()}
    examples = load_split(commit_data, "train", "commit-subject").examples
    contexts = reward_contexts("commit-subject", [ex.input for ex in examples], [ex.profile for ex in examples], 3)
    assert [rows[ex.id]["context"] for ex in examples] == contexts and all(len(c) == 3 for c in contexts)


def test_every_reward_model_config_validates():
    from pathlib import Path

    import yaml

    from prlm.reward.model import RewardTrainConfig
    from prlm.reward.pairs import PairsConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("rm-*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        values = yaml.safe_load(path.read_text())
        kind = (StylePairsConfig if path.name.startswith("rm-style-pairs") else
                PairsConfig if path.name.startswith("rm-pairs") else RewardTrainConfig)
        kind(**values)  # raises on an unknown field or a bad value


def test_rm_judge_cli_on_a_run_folder(commit_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"split": "train", "config": {"method": "rag"}}))
    preds = [{"id": "q0-0", "user_id": "u0", "answer": "mingw: rework it", "gold": "mingw: rework parser crash"},
             {"id": "q1-0", "user_id": "u1", "answer": "Rework the handling of things", "gold": "t0014: rework x"}]
    (run / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert main(["rm", "judge", "--run", str(run), "--data", str(commit_data),
                 "--out", str(tmp_path / "s.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 2 and summary["prefix_match"] == 0.5 and summary["case_match"] == 0.5
    path = make_tiny_rm(tmp_path / "judge", context_entries=2)
    cfg_file = tmp_path / "judge" / "prlm_rm_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "role": "judge"}))
    assert main(["rm", "judge", "--run", str(run), "--data", str(commit_data), "--model", path,
                 "--out", str(tmp_path / "j.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert summary["judge_degenerate"] == 0 and all(r["judge_score"] is not None for r in rows)
    assert summary["judge_reward"] == pytest.approx(sum(r["judge_reward"] for r in rows) / 2, abs=1e-4)


def test_paper_pairs_from_two_runs_and_own_vs_no_profile(commit_data, tmp_path):
    from prlm.reward.style_pairs import pairs_from_runs

    def run(name, answers):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"split": "train"}))
        (folder / "predictions.jsonl").write_text("".join(
            json.dumps({"id": qid, "user_id": qid[1:].split("-")[0], "answer": a}) + "\n" for qid, a in answers))
        return str(folder)

    rag = run("rag", [("q0-0", "mingw: rework"), ("q1-0", "same"), ("q2-0", "")])
    plain = run("plain", [("q0-0", "Rework the parser"), ("q1-0", "same"), ("q2-0", "x")])
    summary = pairs_from_runs(rag, plain, str(commit_data), tmp_path / "p.jsonl", k=2)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert summary == {"pairs": 1, "dropped": 2, "split": "train", "kind": "with-vs-without-profile"}
    assert rows[0]["chosen"] == "mingw: rework" and rows[0]["rejected"] == "Rework the parser"
    assert rows[0]["input"].startswith(PREFIX) and len(rows[0]["context"]) == 2
    summary = pairs_from_runs("gold", plain, str(commit_data), tmp_path / "g.jsonl", k=2)
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert (summary["kind"] == "own-vs-no-profile"
            and rows[0]["chosen"] == "mingw: rework parser crash handling, step 0")


def test_context_checks_give_each_pair_another_users_context():
    from prlm.reward.model import swap_contexts

    rows = [{"user_id": f"u{u}", "id": f"q{u}{j}", "context": [f"ctx of u{u}"]} for u in range(3) for j in range(2)]
    assert swap_contexts(rows, "own") == rows
    assert all(r["context"] == [] for r in swap_contexts(rows, "none"))
    swapped = swap_contexts(rows, "other-user")
    assert [r["id"] for r in swapped] == [r["id"] for r in rows]
    for r in swapped:
        assert r["context"] and r["context"] != [f"ctx of {r['user_id']}"]
    with pytest.raises(PrlmError, match="at least two users"):
        swap_contexts(rows[:2], "other-user")


def test_input_copy_pairs(commit_data, tmp_path):
    from prlm.data import get_task
    from prlm.reward.style_pairs import input_copy

    task = get_task("commit-subject")
    body = PREFIX + "\n\nThe first line of the body says a lot of things at once, more than twelve words here.\nNext."
    assert input_copy(task, body) == "The first line of the body says a lot of things at"
    out = tmp_path / "pairs.jsonl"
    build_style_pairs(StylePairsConfig(data=str(commit_data), kinds="input-copy", out=str(out)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(r["rejected"].startswith("Rework the ") for r in rows)
