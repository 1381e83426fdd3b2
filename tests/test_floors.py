"""The trivial floors: answers made without a model, as the shared data README measures them."""

import json

import pytest

from prlm.cli import main
from prlm.data import Example, get_task
from prlm.floors import bm25_nearest_output, first_words, recent_output

TASK = get_task("commit-subject")
PROFILE = [{"id": "p1", "text": "the parser reads numbers", "title": "parser: numbers", "date": "2020-01-02"},
           {"id": "p2", "text": "docs for the cache layer", "title": "docs: cache", "date": "2021-05-06"},
           {"id": "p3", "text": "speed up the cache layer lookups", "title": "cache: faster", "date": "2019-03-04"}]


def _example(body: str, profile=PROFILE) -> Example:
    return Example(id="q", user_id="u", input=TASK.input_prefix + body, profile=profile, gold="g")


def test_first_words_are_the_first_ten_of_the_body():
    body = "one two three four five six seven eight nine ten eleven twelve"
    assert first_words(TASK, _example(body)) == "one two three four five six seven eight nine ten"


def test_the_most_recent_output_is_the_first_entry_as_profiles_list_newest_first():
    # Profile order, not the dates: git's profiles are in commit order, their dates are author dates.
    assert recent_output(TASK, _example("x")) == "parser: numbers"
    assert recent_output(TASK, _example("x", PROFILE[::-1])) == "cache: faster"
    assert recent_output(TASK, _example("x", [])) == ""


def test_bm25_takes_the_nearest_entry_and_the_earlier_on_a_tie():
    assert bm25_nearest_output(TASK, _example("make the cache lookups faster")) == "cache: faster"
    assert bm25_nearest_output(TASK, _example("nothing in common")) == "parser: numbers"
    assert bm25_nearest_output(TASK, _example("x", [])) == ""


def _write_split(folder, split: str) -> None:
    questions = [{"id": f"{split}-{i}", "user_id": f"u{i}", "input": TASK.input_prefix + body, "profile": PROFILE}
                 for i, body in enumerate(["make the cache lookups faster", "read numbers in the parser"])]
    golds = [{"id": q["id"], "output": gold} for q, gold in zip(questions, ["cache: fast lookups", "parser: ints"])]
    (folder / f"{split}_questions.json").write_text(json.dumps(questions))
    (folder / f"{split}_outputs.json").write_text(json.dumps({"task": "commit-subject", "golds": golds}))


def test_a_floor_run_is_a_record_like_any_other(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write_split(data, "test")
    out = tmp_path / "floor"
    assert main(["results", "floor", "floor-bm25-title", "--task", "commit-subject", "--data", str(data),
                 "--split", "test", "--out", str(out)]) in (0, None)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert summary["config"]["method"] == "floor-bm25-title" and summary["n"] == len(rows) == 2
    assert [r["answer"] for r in rows] == ["cache: faster", "parser: numbers"]
    assert summary["metrics"]["rougeL"] == pytest.approx(sum(r["metrics"]["rougeL"] for r in rows) / len(rows))
    assert "ROUGE-L" in capsys.readouterr().out
