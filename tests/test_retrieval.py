import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from helpers import lamp4_questions
from prlm import PrlmError
from prlm.data import get_task, load_split
from prlm.retrieval import make_retriever, okapi_scores

TASK = get_task("LaMP-4")


def _profile():
    return lamp4_questions(n=1, profile_size=8)[0][0]["profile"]


def _assert_same_top_k(task, query, profile, k):
    """Same top-k as rank_bm25 on LaMP's whitespace tokenization: equal scores,
    and equal ids wherever the k-th score is not tied."""
    entries, scores = make_retriever("bm25", task)(query, profile, k)
    reference = BM25Okapi([task.entry_text(e).split() for e in profile])
    ref_scores = reference.get_scores(task.query(query).split())
    ref_top = np.sort(ref_scores)[::-1][:k]
    np.testing.assert_allclose(scores, ref_top, rtol=1e-9, atol=1e-12)
    cutoff = ref_top[-1] if len(ref_top) else None
    ours = {e["id"] for e, s in zip(entries, scores) if s > cutoff + 1e-9}
    theirs = {profile[i]["id"] for i in np.argsort(ref_scores)[::-1][:k] if ref_scores[i] > cutoff + 1e-9}
    assert ours == theirs


def test_bm25_matches_rank_bm25_including_negative_idf_floor():
    profile = [
        {"id": "a", "title": "common common", "text": "apple banana", "date": "2020-01-01"},
        {"id": "b", "title": "common", "text": "banana cherry", "date": "2020-01-02"},
        {"id": "c", "title": "common", "text": "cherry durian durian", "date": "2020-01-03"},
        {"id": "d", "title": "other", "text": "elder fig", "date": "2020-01-04"},
    ]
    query = "Generate a headline for the following article: common banana durian durian"
    _assert_same_top_k(TASK, query, profile, 3)
    # 'common' is in 3 of 4 entries: its idf is negative and floored, not zero.
    assert okapi_scores(["common"], [["common", "a"], ["common", "b"], ["common", "c"], ["x"]])[0] > 0


def test_bm25_scores_and_order():
    profile = _profile()
    entries, scores = make_retriever("bm25", TASK)("The river flooded the market", profile, 3)
    assert len(entries) == 3 and scores == sorted(scores, reverse=True)
    assert entries[0]["id"] in {"0-0", "0-1"}  # the river / market entries


@pytest.mark.slow
def test_bm25_matches_rank_bm25_on_real_data():
    task = get_task("commit-subject")
    ds = load_split("../shared/data/git-commit-subject", "dev", task)
    for ex in ds.examples[:80]:
        _assert_same_top_k(task, ex.input, ex.profile, 4)


def test_recency_returns_newest_first_and_rejects_bad_dates():
    profile = _profile()
    entries, _ = make_retriever("recency", TASK)("anything", profile, 2)
    assert [e["date"] for e in entries] == ["2020-01-08", "2020-01-07"]
    profile[0]["date"] = "yesterday"
    with pytest.raises(PrlmError, match="not YYYY-MM-DD"):
        make_retriever("recency", TASK)("anything", profile, 2)


def test_random_is_seeded():
    profile = _profile()

    def ids(seed):
        return [e["id"] for e in make_retriever("random", TASK, seed=seed)("q", profile, 4)[0]]

    assert ids(0) == ids(0)
    assert any(ids(0) != ids(s) for s in range(1, 6))


def test_none_k_zero_and_short_profiles():
    profile = _profile()
    assert make_retriever("none", TASK)("q", profile, 4) == ([], [])
    assert make_retriever("bm25", TASK)("q", profile, 0) == ([], [])
    assert len(make_retriever("bm25", TASK)("river", profile[:2], 10)[0]) == 2
    with pytest.raises(PrlmError, match="unknown retriever"):
        make_retriever("tfidf", TASK)


def test_bm25s_ranks_the_obvious_entry_first():
    profile = _profile()
    entries, scores = make_retriever("bm25s", TASK)("storm storm vote", profile, 2)
    assert entries[0]["text"].count("storm") or entries[0]["text"].count("vote")
    assert scores[0] >= scores[1]


@pytest.mark.slow
def test_dense_with_embedded_encoder_prefers_related_entry():
    profile = [
        {"id": "a", "title": "Stocks fall", "text": "Shares dropped on the stock exchange today.",
         "date": "2020-01-01"},
        {"id": "b", "title": "Cup final", "text": "The football team won the championship match.",
         "date": "2020-01-02"},
    ]
    retriever = make_retriever("dense", TASK)
    entries, scores = retriever("The soccer club celebrated its title win.", profile, 2)
    assert entries[0]["id"] == "b" and scores[0] > scores[1]


def test_bm25_cached_profile_queried_again_matches_rank_bm25():
    """A profile's index is built once and reused: later queries score as a fresh rank_bm25 does."""
    profile = _profile()
    retriever = make_retriever("bm25", TASK)
    queries = ["The river flooded the market", "storm storm vote", "a museum by the harbor", "nothing in common"]
    for query in queries * 2:
        ours = retriever.scores(query, profile)
        reference = BM25Okapi([TASK.entry_text(e).split() for e in profile]).get_scores(TASK.query(query).split())
        np.testing.assert_array_equal(ours, reference)  # equal to the last bit
    assert len(retriever._profiles) == 1 and len(retriever._entries) == len(profile)


def test_bm25_caches_stay_bounded_and_results_do_not_change():
    questions = lamp4_questions(n=6, profile_size=5)[0]
    bounded = make_retriever("bm25", TASK)
    bounded.max_entries, bounded.max_profiles = 3, 2
    for q in questions * 2:
        fresh = make_retriever("bm25", TASK)(q["input"], q["profile"], 3)
        assert bounded(q["input"], q["profile"], 3) == fresh
        assert len(bounded._entries) <= 3 and len(bounded._profiles) <= 2


def test_okapi_scores_of_empty_and_unmatched_collections():
    assert okapi_scores(["a"], []).shape == (0,)
    np.testing.assert_array_equal(okapi_scores(["a"], [[], []]), [0.0, 0.0])
    np.testing.assert_array_equal(okapi_scores(["zzz"], [["a", "b"], ["c"]]), [0.0, 0.0])


@pytest.mark.slow
def test_bm25_equals_rank_bm25_bit_for_bit_on_every_split():
    """Every question of git-commit-subject: the same scores to the last bit, so the same top-k under the
    same tie rule."""
    task = get_task("commit-subject")
    retriever = make_retriever("bm25", task)
    for split in ("train", "dev", "test"):
        for ex in load_split("../shared/data/git-commit-subject", split, task).examples:
            reference = BM25Okapi([task.entry_text(e).split() for e in ex.profile])
            np.testing.assert_array_equal(retriever.scores(ex.input, ex.profile),
                                          reference.get_scores(task.query(ex.input).split()))


@pytest.mark.parametrize("method", ["bm25", "random", "recency"])
def test_rankings_stored_once_serve_every_k_as_the_retriever_would(tmp_path, method):
    from types import SimpleNamespace

    from prlm.retrieval import ranked_retriever, retrieve_each, retrieve_split, save_rankings

    examples = [SimpleNamespace(**q) for q in lamp4_questions(n=4, profile_size=8)[0]]
    rows = retrieve_split(make_retriever(method, TASK, seed=3), examples, depth=5)
    assert [r["id"] for r in rows] == [ex.id for ex in examples] and all(len(r["ranking"]) == 5 for r in rows)
    save_rankings(tmp_path / "train.jsonl", rows)
    ranked = ranked_retriever(TASK, method, tmp_path / "train.jsonl")
    for k in (1, 3, 5):
        direct = retrieve_each(make_retriever(method, TASK, seed=3), examples, k)
        served = retrieve_each(ranked, examples, k)
        assert [[e["id"] for e in entries] for entries, _ in served] == [[e["id"] for e in entries]
                                                                          for entries, _ in direct]
        assert [s for _, scores in served for s in scores] == [round(s, 6) for _, scores in direct for s in scores]
    with pytest.raises(PrlmError, match="larger k"):
        ranked(examples[0].input, examples[0].profile, 6)


def test_prepare_is_a_no_op_unless_a_retriever_batches_work():
    retriever = make_retriever("bm25", TASK)
    retriever.prepare([], [])
    retriever.prepare(["q"], [_profile()])  # nothing to do for BM25: it indexes a profile when it is queried
    dense = make_retriever("dense", TASK)
    dense.prepare([], [[]])  # nothing to embed: the encoder is not even loaded
    assert dense._model is None and dense.cached_texts == []
