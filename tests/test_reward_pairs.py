"""Preference pairs: content, provenance, resuming, reuse of a no-profile run, bad pairs files."""

from __future__ import annotations

import json

import pytest

from helpers import lamp4_questions, write_lamp
from prlm import PrlmError
from prlm.cli import main
from prlm.reward.pairs import PairsConfig, build_pairs, meta_path, nearest_other_user, read_pairs


class FakeGenerator:
    """Answers from the prompt alone: 'profile ...' when profile entries are in it, else 'plain ...'.

    `fail_on_call` raises on that call (1-based), as an interrupted run would stop.
    """

    def __init__(self, fail_on_call: int = 0, empty_for: str = ""):
        self.calls, self.prompts, self.fail_on_call, self.empty_for = 0, [], fail_on_call, empty_for

    def generate(self, prompts, params, progress=True, desc=""):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        self.prompts.extend(prompts)
        out = []
        for p in prompts:
            if self.empty_for and self.empty_for in p and "is the headline for" not in p:
                out.append([""])
            elif "is the headline for" in p:
                out.append([f"profile {len(p)}"])
            else:
                out.append([f"plain {len(p)}"])
        return out


def _train_data(tmp_path, n=6):
    questions, outputs = lamp4_questions(n=n)
    return write_lamp(tmp_path / "data", split="train", questions=questions, outputs=outputs)


def _cfg(data, out, **kw):
    base = dict(task="LaMP-4", data=str(data), split="train", out=str(out), backend="hf", device="cpu",
                chunk_size=2, k=2)
    return PairsConfig(**{**base, **kw})


def test_pairs_content_and_provenance(tmp_path, policy_tokenizer):
    data = _train_data(tmp_path)
    out = tmp_path / "pairs.jsonl"
    gen = FakeGenerator()
    summary = build_pairs(_cfg(data, out, model="tiny"), progress=False, generator=gen, tokenizer=policy_tokenizer)
    rows = read_pairs(out)
    assert summary["pairs"] == len(rows) == 6 and summary["dropped"] == 0
    assert len(gen.prompts) == 12  # one rag and one no-profile prompt per question, in chunks of 2 questions
    row = rows[0]
    assert row["chosen"].startswith("profile") and row["rejected"].startswith("plain")
    assert (row["chosen_completion"], row["rejected_completion"]) == (row["chosen"], row["rejected"])  # raw texts
    assert row["kind"] == "rag-vs-no-profile" and row["pair_id"] == "q0:rag-vs-no-profile"
    assert row["input"].startswith("Generate a headline") and row["user_id"] == "u0"
    assert len(row["retrieved"]) == 2 == len(row["context"]) and row["retrieved"][0].startswith("0-")
    assert '" is the headline for "' in row["context"][0]
    for key, value in dict(retriever="bm25", k=2, model="tiny", seed=0, task="LaMP-4", split="train").items():
        assert row[key] == value
    meta = json.loads(meta_path(out).read_text())
    assert meta["provenance"]["model"] == "tiny" and meta["summary"]["pairs"] == 6


def test_empty_side_is_dropped_and_counted(tmp_path, policy_tokenizer):
    data = _train_data(tmp_path, n=4)
    out = tmp_path / "pairs.jsonl"
    # The no-profile answer of q1 (input mentions 'market') is empty.
    summary = build_pairs(_cfg(data, out), progress=False, generator=FakeGenerator(empty_for="market"),
                          tokenizer=policy_tokenizer)
    assert summary["pairs"] == 3 and summary["dropped"] == 1
    assert summary["dropped_by_reason"] == {"empty rejected": 1}
    assert [r["id"] for r in read_pairs(out)] == ["q0", "q2", "q3"]
    assert json.loads(meta_path(out).read_text())["dropped"] == {"q1:rag-vs-no-profile": "empty rejected"}


def test_interrupted_run_resumes_where_it_stopped(tmp_path, policy_tokenizer):
    data = _train_data(tmp_path, n=6)
    out = tmp_path / "pairs.jsonl"
    cfg = _cfg(data, out)
    with pytest.raises(KeyboardInterrupt):
        build_pairs(cfg, progress=False, generator=FakeGenerator(fail_on_call=2, empty_for="market"),
                    tokenizer=policy_tokenizer)
    assert [r["id"] for r in read_pairs(out)] == ["q0"]  # first chunk (q0, q1) saved; q1 dropped
    again = FakeGenerator(empty_for="market")
    summary = build_pairs(cfg, progress=False, generator=again, tokenizer=policy_tokenizer)
    assert summary["questions_resumed"] == 2 and summary["questions_now"] == 4
    assert len(again.prompts) == 8  # only q2..q5 generated again
    ids = [r["id"] for r in read_pairs(out)]
    assert ids == ["q0", "q2", "q3", "q4", "q5"] and summary["dropped"] == 1
    # A finished file: a third run generates nothing.
    third = FakeGenerator()
    assert build_pairs(cfg, progress=False, generator=third, tokenizer=policy_tokenizer)["written_now"] == 0
    assert third.calls == 0


def test_resume_with_other_options_is_refused(tmp_path, policy_tokenizer):
    data = _train_data(tmp_path, n=2)
    out = tmp_path / "pairs.jsonl"
    build_pairs(_cfg(data, out), progress=False, generator=FakeGenerator(), tokenizer=policy_tokenizer)
    with pytest.raises(PrlmError, match=r"made with other options \(k: 2 -> 3\)"):
        build_pairs(_cfg(data, out, k=3), progress=False, generator=FakeGenerator(), tokenizer=policy_tokenizer)
    meta_path(out).unlink()
    with pytest.raises(PrlmError, match="without its sidecar"):
        build_pairs(_cfg(data, out), progress=False, generator=FakeGenerator(), tokenizer=policy_tokenizer)
    summary = build_pairs(_cfg(data, out, k=3, overwrite=True), progress=False, generator=FakeGenerator(),
                          tokenizer=policy_tokenizer)
    assert summary["pairs"] == 2 and all(r["k"] == 3 for r in read_pairs(out))


def test_other_user_and_gold_kinds(tmp_path, policy_tokenizer):
    data = _train_data(tmp_path, n=6)
    out = tmp_path / "pairs.jsonl"
    gen = FakeGenerator()
    build_pairs(_cfg(data, out, kinds="gold-vs-other-user,gold-vs-no-profile"), progress=False,
                generator=gen, tokenizer=policy_tokenizer)
    rows = read_pairs(out)
    assert len(gen.prompts) == 6  # no-profile prompts only
    golds = {g["id"]: g["output"] for g in lamp4_questions(n=6)[1]["golds"]}
    for row in rows:
        assert row["chosen"] == golds[row["id"]]
        if row["kind"] == "gold-vs-other-user":
            assert row["other_user_id"] != row["user_id"] and row["rejected"] == golds[row["other_id"]]
        else:
            assert row["rejected"].startswith("plain")


def test_nearest_other_user_is_bm25_nearest_of_another_user():
    from prlm.data import get_task
    from prlm.data.lamp import Example

    task = get_task("LaMP-4")
    prefix = task.input_prefix
    exs = [Example("a", "u1", prefix + "the river flooded the old town", [], "x"),
           Example("b", "u1", prefix + "the river flooded the old town again", [], "y"),
           Example("c", "u2", prefix + "river flooded town", [], "z"),
           Example("d", "u3", prefix + "budget vote in council", [], "w")]
    nearest = nearest_other_user(task, exs, exs)
    assert nearest["a"].id == "c" and nearest["b"].id == "c" and nearest["d"].user_id != "u3"


def test_reuses_a_no_profile_run(tmp_path):
    data = _train_data(tmp_path, n=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"split": "train", "config": {"method": "no-profile", "model": "m"}}))
    (run / "predictions.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "answer": f"np {i}",
                                                               "completion": f"Subject: np {i}"}) + "\n"
                                                   for i in range(3)))
    out = tmp_path / "pairs.jsonl"
    build_pairs(_cfg(data, out, kinds="gold-vs-no-profile", no_profile_run=str(run)), progress=False)
    rows = read_pairs(out)
    assert [r["rejected"] for r in rows] == ["np 0", "np 1", "np 2"] and rows[0]["model"] == "m"
    assert rows[0]["rejected_completion"] == "Subject: np 0" and "chosen_completion" not in rows[0]
    (run / "summary.json").write_text(json.dumps({"split": "dev", "config": {"method": "no-profile"}}))
    with pytest.raises(PrlmError, match="is on split 'dev'"):
        build_pairs(_cfg(data, tmp_path / "p2.jsonl", kinds="gold-vs-no-profile", no_profile_run=str(run)),
                    progress=False)


def test_config_errors():
    with pytest.raises(PrlmError, match="kinds='best' is not valid"):
        PairsConfig(data="d", out="o", kinds="best")
    with pytest.raises(PrlmError, match="needs profile entries"):
        PairsConfig(data="d", out="o", k=0)
    with pytest.raises(PrlmError, match="out is required"):
        PairsConfig(data="d")


GOOD = {"id": "q1", "user_id": "u1", "input": "text", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not valid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "rejected"}), "line 2: missing field 'rejected'"),
    (json.dumps({**GOOD, "chosen": "  "}), "line 2: field 'chosen' is empty"),
    (json.dumps({**GOOD, "rejected": 3}), "line 2: field 'rejected' must be a string"),
    (json.dumps([1, 2]), "line 2: expected a JSON object"),
    (json.dumps({**GOOD, "context": "not a list"}), "line 2: field 'context' must be a list"),
])
def test_bad_pairs_file_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(PrlmError) as err:
        read_pairs(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_bad_pairs_files_in_the_cli_are_one_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "rejected": ""}) + "\n")
    assert main(["rm", "train", "--pairs", str(path), "--out", str(tmp_path / "rm")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prlm: error:") and err.count("\n") == 1 and f"{path}: line 2" in err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["rm", "eval", "--model", str(tmp_path), "--pairs", str(tmp_path / "empty.jsonl")]) == 2
    assert "no pairs in the file" in capsys.readouterr().err
    path.write_text(json.dumps({**GOOD, "pair_id": "x"}) + "\n" + json.dumps({**GOOD, "pair_id": "x"}) + "\n")
    with pytest.raises(PrlmError, match="line 2: duplicate pair_id 'x' \\(also line 1\\)"):
        read_pairs(path)


def test_pairs_cli_with_a_tiny_policy(tmp_path, tiny_llama_dir, capsys):
    data = _train_data(tmp_path, n=4)
    out = tmp_path / "pairs.jsonl"
    argv = ["rm", "pairs", "--task", "LaMP-4", "--data", str(data), "--model", tiny_llama_dir, "--backend", "hf",
            "--device", "cpu", "--k", "2", "--max-new-tokens", "4", "--chunk-size", "3", "--out", str(out)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    summary = json.loads(first.splitlines()[0])
    assert summary["pairs"] + summary["dropped"] == 4
    assert main(argv) == 0  # resumed: nothing left to do
    assert json.loads(capsys.readouterr().out.splitlines()[0])["questions_resumed"] == 4
