import copy

import pytest

from helpers import lamp4_questions, write_lamp
from prlm import PrlmError
from prlm.data import get_task, load_split, split_stats
from prlm.data.lamp import save_split


def test_loads_flat_and_lamp_layouts(tmp_path):
    flat = load_split(write_lamp(tmp_path / "flat"), "dev", "LaMP-4")
    nested = load_split(write_lamp(tmp_path / "nested", nested=True), "dev", "LaMP_4")
    assert [ex.id for ex in flat.examples] == [ex.id for ex in nested.examples] == ["q0", "q1", "q2", "q3"]
    assert flat.examples[0].gold == "River opens today"
    assert flat.examples[1].user_id == "u1"
    assert len(flat.examples[0].profile) == 5


def test_user_based_split_without_user_id_uses_question_id(tmp_path):
    questions, outputs = lamp4_questions()
    for q in questions:
        del q["user_id"]
    ds = load_split(write_lamp(tmp_path, questions=questions, outputs=outputs), "dev", "LaMP-4")
    assert [ex.user_id for ex in ds.examples] == [ex.id for ex in ds.examples]


def _expect_error(tmp_path, mutate, *fragments, task="LaMP-4", **kwargs):
    questions, outputs = lamp4_questions()
    questions, outputs = mutate(copy.deepcopy(questions), copy.deepcopy(outputs))
    write_lamp(tmp_path, questions=questions, outputs=outputs)
    with pytest.raises(PrlmError) as err:
        load_split(tmp_path, "dev", task, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


@pytest.mark.parametrize("path,value,fragments", [
    ((1, "input"), KeyError, ["record 1", "'q1'", "missing field 'input'"]),
    ((2, "profile", 3, "title"), KeyError, ["record 2", "profile entry 3", "'2-3'", "missing field 'title'"]),
    ((0, "profile"), [], ["record 0", "'profile' is empty"]),
    ((0, "profile"), "x", ["record 0", "'profile' must be a list"]),
    ((3, "input"), 42, ["record 3", "'input' must be a string"]),
    ((1, "id"), "q0", ["record 1", "duplicate id 'q0'"]),
])
def test_bad_questions_name_record_and_field(tmp_path, path, value, fragments):
    _expect_error(tmp_path, lambda q, o: (_set(q, path, value), (q, o))[1], "dev_questions.json", *fragments)


def test_lamp7_entries_need_only_text(tmp_path):
    questions, outputs = lamp4_questions()
    for q in questions:
        q["input"] = q["input"].replace("Generate a headline for the following article: ",
                                        "Paraphrase the following tweet without any explanation before or after it: ")
        for e in q["profile"]:
            del e["title"]
    write_lamp(tmp_path, questions=questions, outputs={**outputs, "task": "LaMP_7"})
    assert len(load_split(tmp_path, "dev", "LaMP-7")) == 4
    with pytest.raises(PrlmError, match="missing field 'title'"):
        load_split(tmp_path, "dev", "LaMP-4")


def test_empty_profile_allowed_on_request(tmp_path):
    questions, outputs = lamp4_questions()
    questions[0]["profile"] = []
    write_lamp(tmp_path, questions=questions, outputs=outputs)
    assert load_split(tmp_path, "dev", "LaMP-4", allow_empty_profiles=True).examples[0].profile == []


def test_huge_profile_is_refused(tmp_path):
    _expect_error(tmp_path, lambda q, o: (q, o), "record 0", "5 entries", "max_profile_entries",
                  max_profile_entries=4)


def test_id_sets_must_match(tmp_path):
    def drop_gold(q, o):
        o["golds"] = o["golds"][1:] + [{"id": "zz", "output": "x"}]
        return q, o
    _expect_error(tmp_path, drop_gold, "ids differ", "'q0'", "'zz'")


def test_duplicate_gold_ids(tmp_path):
    def dup(q, o):
        o["golds"][1]["id"] = "q0"
        return q, o
    _expect_error(tmp_path, dup, "dev_outputs.json", "duplicate id 'q0'")


def test_malformed_json_and_non_utf8(tmp_path):
    write_lamp(tmp_path)
    (tmp_path / "dev_questions.json").write_text('[{"id": "q0",\n "input": }]', encoding="utf-8")
    with pytest.raises(PrlmError, match=r"dev_questions.json: line 2 column \d+: not valid JSON"):
        load_split(tmp_path, "dev", "LaMP-4")
    (tmp_path / "dev_questions.json").write_bytes(b'[{"id": "\xff"}]')
    with pytest.raises(PrlmError, match="not UTF-8 text"):
        load_split(tmp_path, "dev", "LaMP-4")


def test_missing_split_and_missing_golds(tmp_path):
    with pytest.raises(PrlmError, match="does not exist"):
        load_split(tmp_path / "nope", "dev", "LaMP-4")
    write_lamp(tmp_path, outputs=None, questions=lamp4_questions()[0])
    with pytest.raises(PrlmError, match="no questions file for split 'test'"):
        load_split(tmp_path, "test", "LaMP-4")
    assert not load_split(tmp_path, "dev", "LaMP-4").has_golds
    with pytest.raises(PrlmError, match="needs the gold outputs"):
        load_split(tmp_path, "dev", "LaMP-4", require_golds=True)


def test_save_split_round_trip_and_stats(tmp_path):
    ds = load_split(write_lamp(tmp_path / "a"), "dev", "LaMP-4")
    save_split(tmp_path / "b", "dev", get_task("LaMP-4"), ds.examples)
    again = load_split(tmp_path / "b", "dev", "LaMP-4")
    assert [(e.id, e.gold, e.profile) for e in again.examples] == [(e.id, e.gold, e.profile) for e in ds.examples]
    assert not list((tmp_path / "b").glob(".*tmp"))  # atomic writes leave no temp files
    stats = split_stats(again)
    assert stats["questions"] == 4 and stats["users"] == 2 and stats["profile_max"] == 5


def test_task_table_query_and_unknown_task():
    task = get_task("commit-subject")
    assert task.query("Generate a subject line for the following commit message: fix the bug") == "fix the bug"
    assert task.query("no prefix here") == "no prefix here"
    with pytest.raises(PrlmError, match="unknown task 'LaMP-9'"):
        get_task("LaMP-9")


@pytest.mark.slow
@pytest.mark.parametrize("split,count", [("train", 628), ("dev", 157), ("test", 157)])
def test_shared_commit_subject_data_loads(split, count):
    ds = load_split("../shared/data/git-commit-subject", split, "commit-subject")
    assert len(ds) == count and ds.has_golds
    assert len({ex.user_id for ex in ds.examples}) == 157
