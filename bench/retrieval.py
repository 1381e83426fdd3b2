"""Retrieval: per-question top-k over every split of git-commit-subject.

* bm25: prlm's `bm25` retriever against `rank_bm25.BM25Okapi` used as LaMP's
  `rank_profiles.py` uses it (whitespace `.split()` of `title text` and of the
  query, a new index per question, `get_top_n`). Top-k checked identical.
* dense: the embedded MiniLM encoder with the embedding cache (each distinct
  text encoded once, in large batches) against encoding every question's
  query and profile anew (as LaMP's dense retrieval does).
"""

from __future__ import annotations

import cProfile
import pstats

import numpy as np

from bench.common import (
    DEFAULT_DATA,
    add_size_options,
    choose_sizes,
    comparison,
    first_users,
    load_examples,
    measurement,
    time_runs,
    top_functions,
)

FULL = {"bm25_users": 0, "dense_users": 2, "k": 4}
QUICK = {"bm25_users": 12, "dense_users": 1, "k": 4}
HELP = {"bm25_users": "users whose questions (all splits) the bm25 comparison retrieves for; 0 = every user",
        "dense_users": "users whose questions (all splits) the dense comparison retrieves for; 0 = no dense "
                       "comparison",
        "k": "profile entries retrieved per question"}
BM25_TARGET = 20.0


def add_arguments(parser) -> None:
    add_size_options(parser, FULL, QUICK, HELP)


def run(quick: bool, args=None) -> dict:
    sizes = choose_sizes(args, FULL, QUICK, quick)
    repeats = getattr(args, "repeats", None) or (1 if quick else 3)
    task, examples = load_examples(getattr(args, "data", None) or DEFAULT_DATA)
    bm25_examples = first_users(examples, sizes["bm25_users"]) if sizes["bm25_users"] else examples
    dense_examples = first_users(examples, sizes["dense_users"])
    sizes.update(repeats=repeats, bm25_questions=len(bm25_examples), dense_questions=len(dense_examples),
                 bm25_profile_entries=sum(len(ex.profile) for ex in bm25_examples),
                 dense_profile_entries=sum(len(ex.profile) for ex in dense_examples))
    comparisons = bm25_comparisons(task, bm25_examples, sizes["k"], repeats)
    if dense_examples:  # --dense-users 0 leaves the encoder out
        comparisons.append(dense_comparison(task, dense_examples, sizes["k"], repeats))
    cold = comparisons[0]
    return {"title": "Retrieval", "sizes": sizes, "comparisons": comparisons,
            "profile": {"bm25, one cold pass": profile_bm25(task, bm25_examples, sizes["k"])},
            "notes": [] if cold["target_met"] else [bm25_note(task, bm25_examples, cold)]}


# --- bm25 --------------------------------------------------------------------

def lamp_bm25_top_k(task, examples, k: int) -> list[list[dict]]:
    """LaMP's rank_profiles.py: a BM25Okapi per question over `title text`, `get_top_n`."""
    from rank_bm25 import BM25Okapi

    ranked = []
    for ex in examples:
        index = BM25Okapi([task.entry_text(e).split() for e in ex.profile])
        ranked.append(index.get_top_n(task.query(ex.input).split(), ex.profile, n=k))
    return ranked


def prlm_top_k(retriever, examples, k: int) -> list[tuple[list[dict], list[float]]]:
    return [retriever(ex.input, ex.profile, k) for ex in examples]


def bm25_comparisons(task, examples, k: int, repeats: int) -> list[dict]:
    from prlm.retrieval import make_retriever

    n = len(examples)
    base_times, _ = time_runs(lambda: lamp_bm25_top_k(task, examples, k), repeats)
    baseline = measurement("rank_bm25.BM25Okapi, one index per question (LaMP)", base_times, n, "questions/s")
    cold_times, _ = time_runs(lambda r: prlm_top_k(r, examples, k), repeats,
                              setup=lambda: make_retriever("bm25", task))
    warm = make_retriever("bm25", task)
    prlm_top_k(warm, examples, k)
    warm_times, _ = time_runs(lambda: prlm_top_k(warm, examples, k), repeats)
    checks = check_bm25_top_k(task, examples, k)
    return [
        comparison("bm25 top-k, fresh retriever (one pass over the questions)", baseline,
                   measurement("prlm bm25, new retriever each pass", cold_times, n, "questions/s"),
                   target=BM25_TARGET, checks=checks),
        comparison("bm25 top-k, retriever reused (a second pass: entries already tokenised)", baseline,
                   measurement("prlm bm25, same retriever again", warm_times, n, "questions/s"),
                   target=BM25_TARGET, checks=checks),
    ]


def check_bm25_top_k(task, examples, k: int) -> dict:
    """Identical top-k: the same entries with bit-equal scores as rank_bm25's scores ranked with
    prlm's tie rule (stable: earlier entry first); and how LaMP's get_top_n lists compare (its
    argsort breaks ties the other way)."""
    from rank_bm25 import BM25Okapi

    from prlm.retrieval import make_retriever

    retriever = make_retriever("bm25", task)
    identical = same_as_get_top_n = differ_only_in_tie_order = 0
    for ex in examples:
        entries, scores = retriever(ex.input, ex.profile, k)
        index = BM25Okapi([task.entry_text(e).split() for e in ex.profile])
        query = task.query(ex.input).split()
        reference = np.asarray(index.get_scores(query))
        order = np.argsort(-reference, kind="stable")[:k]
        identical += ([e["id"] for e in entries] == [ex.profile[i]["id"] for i in order]
                      and np.array_equal(scores, reference[order]))
        lamp_ids = [e["id"] for e in index.get_top_n(query, ex.profile, n=k)]
        if lamp_ids == [e["id"] for e in entries]:
            same_as_get_top_n += 1
        else:
            position = {e["id"]: i for i, e in enumerate(ex.profile)}
            lamp_scores = sorted(reference[position[i]] for i in lamp_ids)
            differ_only_in_tie_order += lamp_scores == sorted(scores)
    return {"questions": len(examples), "identical_top_k": identical, "same_list_as_get_top_n": same_as_get_top_n,
            "differ_from_get_top_n_only_in_tie_order": differ_only_in_tie_order}


def tokenisation_seconds(task, examples) -> tuple[int, float]:
    """Distinct profile entries, and the seconds to tokenise and count each once (the cold pass's floor)."""
    import time

    from prlm.retrieval import Vocabulary

    texts = list(dict.fromkeys(task.entry_text(e) for ex in examples for e in ex.profile))
    vocab = Vocabulary()
    start = time.perf_counter()
    for text in texts:
        vocab.add(text.split())
    return len(texts), time.perf_counter() - start


def bm25_note(task, examples, cold: dict) -> str:
    distinct, seconds = tokenisation_seconds(task, examples)
    baseline = cold["baseline"]["median_s"]
    return (f"bm25 cold pass below its target ({cold['ratio']:.3g}x): tokenising each of the {distinct} distinct "
            f"profile entries once (split, count, term ids) alone takes {seconds:.3g} s, which caps a single cold "
            f"pass at {baseline / seconds:.3g}x rank_bm25's {baseline:.3g} s whatever the scoring costs (see the "
            "profile). A reused retriever skips that work (second row). Reaching the target on one cold pass would "
            "need the tokenising and counting in compiled code (a C/Rust extension), or entry indexes saved "
            "across runs.")


def profile_bm25(task, examples, k: int, n: int = 8) -> list[dict]:
    from prlm.retrieval import make_retriever

    retriever = make_retriever("bm25", task)
    profiler = cProfile.Profile()
    profiler.runcall(prlm_top_k, retriever, examples, k)
    return top_functions(pstats.Stats(profiler), n)


# --- dense -------------------------------------------------------------------

def dense_top_k(retriever, examples, k: int, prepare: bool) -> list[list[str]]:
    if prepare:
        retriever.prepare([ex.input for ex in examples], [ex.profile for ex in examples])
    return [[e["id"] for e in retriever(ex.input, ex.profile, k)[0]] for ex in examples]


def dense_comparison(task, examples, k: int, repeats: int) -> dict:
    from prlm.models import load_encoder
    from prlm.retrieval import DenseRetriever

    encoder = load_encoder("minilm")  # loaded once: loading is not what is measured

    def fresh(cache: bool) -> DenseRetriever:
        return DenseRetriever(task, cache_embeddings=cache, model=encoder)

    n = len(examples)
    base_times, base_ids = time_runs(lambda r: dense_top_k(r, examples, k, prepare=False), repeats,
                                     setup=lambda: fresh(False))
    cand_times, cand_ids = time_runs(lambda r: dense_top_k(r, examples, k, prepare=True), repeats,
                                     setup=lambda: fresh(True))
    texts = [task.entry_text(e) for ex in examples for e in ex.profile]
    return comparison(
        "dense top-k (MiniLM): embedding cache against encoding every question anew",
        measurement("encode query and profile per question (LaMP)", base_times, n, "questions/s",
                    texts_encoded=len(texts) + n),
        measurement("prlm dense: each distinct text encoded once", cand_times, n, "questions/s",
                    texts_encoded=len(set(texts) | {task.query(ex.input) for ex in examples})),
        checks={"questions": n, "identical_top_k": sum(a == b for a, b in zip(base_ids, cand_ids))})
