import collections
import json
from dataclasses import fields

import pytest
from rouge_score import rouge_scorer, tokenize

from prlm import PrlmError
from prlm.data import SPLITS, get_task, load_split
from prlm.data.synthetic import (
    ACTIONS,
    MAX_USERS,
    TAGS,
    SyntheticConfig,
    generate,
    make_synthetic,
    render_headline,
    user_style,
    write_synthetic,
)

TASK = get_task("synthetic")
SMALL = dict(num_users=6, profile_size=5, questions_per_user=(3, 1, 1))


def words(text: str) -> list[str]:
    """Tokens as ROUGE sees them: lowercased, punctuation dropped."""
    return tokenize.tokenize(text, None)


def as_dicts(splits):
    return {s: [vars(ex) for ex in exs] for s, exs in splits.items()}


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig())


def test_same_seed_same_data_other_seed_other_data():
    assert as_dicts(make_synthetic(**SMALL, seed=3)) == as_dicts(make_synthetic(**SMALL, seed=3))
    assert as_dicts(make_synthetic(**SMALL, seed=3)) != as_dicts(make_synthetic(**SMALL, seed=4))


def test_split_sizes_and_ids(data):
    cfg = data.config
    for split, per_user in zip(SPLITS, cfg.questions_per_user):
        examples = data.splits[split]
        assert len(examples) == cfg.num_users * per_user
        assert [ex.id for ex in examples] == [f"synth-{split}-{i:05d}" for i in range(len(examples))]
        assert all(len(ex.profile) == cfg.profile_size for ex in examples)
        assert all(ex.input.startswith(TASK.input_prefix) for ex in examples)
    entry_ids = {e["id"] for exs in data.splits.values() for ex in exs for e in ex.profile}
    per_user_entries = {(ex.user_id, e["id"]) for exs in data.splits.values() for ex in exs for e in ex.profile}
    assert len(entry_ids) == len(per_user_entries) == cfg.num_users * cfg.profile_size


def test_written_files_load_and_match(tmp_path):
    out = write_synthetic(tmp_path / "synth", **SMALL, seed=1)
    splits = make_synthetic(**SMALL, seed=1)
    for split in SPLITS:
        dataset = load_split(out, split, "synthetic", require_golds=True)
        assert dataset.task.name == "synthetic"
        assert [(ex.id, ex.user_id, ex.input, ex.gold) for ex in dataset.examples] == [
            (ex.id, ex.user_id, ex.input, ex.gold) for ex in splits[split]
        ]
        assert dataset.examples[0].profile == splits[split][0].profile
        outputs = json.loads((out / f"{split}_outputs.json").read_text())
        assert outputs["task"] == "synthetic"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["num_users"] == 6 and meta["config"]["seed"] == 1
    assert set(meta["users"]) == {f"u{i:03d}" for i in range(6)}
    assert meta["users"]["u002"]["tag"] == user_style("u002", seed=1).tag


def test_dates_are_time_split(data):
    by_user = collections.defaultdict(dict)
    for split in SPLITS:
        for ex in data.splits[split]:
            by_user[ex.user_id].setdefault(split, []).append(ex)
    for uid, splits in by_user.items():
        profile_dates = [e["date"] for e in splits["train"][0].profile]
        assert profile_dates == sorted(profile_dates)
        question_dates = [data.events[ex.id].date for split in SPLITS for ex in splits[split]]
        assert max(profile_dates) < min(question_dates), uid
        assert question_dates == sorted(question_dates) and len(set(question_dates)) == len(question_dates)
        assert max(data.events[ex.id].date for ex in splits["train"]) < data.events[splits["dev"][0].id].date
        assert data.events[splits["dev"][-1].id].date < min(data.events[ex.id].date for ex in splits["test"])


def test_gold_is_a_function_of_content_and_style(data):
    for exs in data.splits.values():
        for ex in exs:
            style = data.styles[ex.user_id]
            assert ex.gold == render_headline(data.events[ex.id], style)
            assert style == user_style(ex.user_id, seed=0)
            for entry in ex.profile:
                assert entry["title"] == render_headline(data.events[entry["id"]], style)


def test_preferences_are_visible_in_profile_and_gold(data):
    for exs in data.splits.values():
        for ex in exs:
            style = data.styles[ex.user_id]
            tag = words(style.tag)
            for text in [ex.gold] + [e["title"] for e in ex.profile]:
                assert words(text)[: len(tag)] == tag
                if style.suffix:
                    assert words(text)[-len(words(style.suffix)) :] == words(style.suffix)
    tags = [s.tag for s in data.styles.values()]
    assert len(set(tags)) == len(TAGS)  # 40 users over 12 tags: every tag in use
    assert len(set(tags[: len(TAGS)])) == len(TAGS)  # the first 12 users all differ
    assert len({(s.tag, s.suffix, s.register, s.length) for s in data.styles.values()}) == len(data.styles)


def test_style_words_come_only_from_the_profile(data):
    """Tag, sign-off and verb synonym never occur in any article: a model must read the profile."""
    style_words = {w for t in TAGS for w in words(t)}
    style_words |= {w for s in data.styles.values() for w in words(s.suffix)}
    style_words |= {w for a in ACTIONS.values() for v in a.verbs for w in words(v)}
    for exs in data.splits.values():
        for ex in exs:
            article = set(words(TASK.query(ex.input)))
            assert not article & style_words, ex.id
            event = data.events[ex.id]
            content = words(event.subject) + words(event.object)
            assert set(content) <= article  # a no-profile model can still find the content
            for entry in ex.profile:
                assert not set(words(entry["text"])) & style_words


def test_profile_shows_the_users_verb_for_each_kind_of_event(data):
    for ex in data.splits["test"]:
        action = data.events[ex.id].action
        assert any(data.events[e["id"]].action == action for e in ex.profile)


STOP = {"the", "a", "on", "in"}


def no_profile_guess(example, n=5):
    """Ignore the profile: the first content words of the article."""
    return " ".join([w for w in words(TASK.query(example.input)) if w not in STOP][:n])


def profile_guess(example, n=5):
    """Read the profile: the words every past headline starts and ends with, around the same guess."""
    titles = [words(e["title"]) for e in example.profile]

    def common_prefix(lists):
        out = []
        for column in zip(*lists):
            if len(set(column)) > 1:
                break
            out.append(column[0])
        return out

    prefix = common_prefix(titles)
    suffix = common_prefix([t[::-1] for t in titles])[::-1]
    return " ".join(prefix + [no_profile_guess(example, n)] + suffix)


def test_reading_the_profile_beats_ignoring_it(data):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for split in ("train", "test"):
        examples = data.splits[split]
        blind = sum(scorer.score(ex.gold, no_profile_guess(ex))["rougeL"].fmeasure for ex in examples)
        aware = sum(scorer.score(ex.gold, profile_guess(ex))["rougeL"].fmeasure for ex in examples)
        blind, aware = blind / len(examples), aware / len(examples)
        assert 0.2 < blind < 0.65, (split, blind)  # partial credit, far from solved
        assert aware - blind > 0.15, (split, blind, aware)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_users=0), "num_users"),
        (dict(num_users=MAX_USERS + 1), "num_users"),
        (dict(num_users=2.5), "num_users"),
        (dict(profile_size=0), "profile_size"),
        (dict(questions_per_user=(1, 1)), "questions_per_user"),
        (dict(questions_per_user=(1, -1, 1)), "questions_per_user"),
        (dict(questions_per_user=(0, 0, 0)), "questions_per_user"),
        (dict(actions_per_user=0), "actions_per_user"),
        (dict(actions_per_user=len(ACTIONS) + 1), "actions_per_user"),
        (dict(actions_per_user=1, profile_size=100), "profile_size"),
        (dict(seed="0"), "seed"),
    ],
)
def test_bad_config_raises(kwargs, message, tmp_path):
    with pytest.raises(PrlmError, match=message):
        SyntheticConfig(**kwargs)
    with pytest.raises(PrlmError, match=message):
        write_synthetic(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_every_config_field_has_help():
    assert all(f.metadata.get("help") for f in fields(SyntheticConfig))
    assert SyntheticConfig(questions_per_user=[2, 1, 1]).questions_per_user == (2, 1, 1)
    with pytest.raises(PrlmError, match="user index"):
        user_style("u999")
