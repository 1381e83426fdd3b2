"""Retrieval over one user's profile: `retriever(query, profile, k) -> (entries, scores)`.

Methods: `none`, `random` (seeded), `recency` (newest first), `bm25` (Okapi
BM25 scored exactly as `rank_bm25.BM25Okapi`, LaMP's reference: vectorised,
entries tokenised once and profile indexes cached),
`bm25s` (the bm25s library, Lucene idf), `dense` (a sentence-transformers
encoder, cosine similarity). Retrievers are pure given their inputs: the same
query and profile always give the same entries.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import random
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from prlm import PrlmError
from prlm.data.tasks import Task
from prlm.options import check_choice, opt

METHODS = ("none", "random", "recency", "bm25", "bm25s", "dense")

Retrieved = tuple[list[dict], list[float]]


def whitespace_tokenize(text: str) -> list[str]:
    """LaMP's tokenization for BM25: split on whitespace, nothing else."""
    return text.split()


def _top_k(profile: Sequence[dict], scores: np.ndarray, k: int) -> Retrieved:
    # Stable sort: ties keep profile order, so results are reproducible.
    order = np.argsort(-scores, kind="stable")[:k]
    return [profile[i] for i in order], [float(scores[i]) for i in order]


# --- BM25 -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EntryTerms:
    """One tokenised text: its distinct term ids in order of first appearance,
    how often each occurs, and its length in tokens."""

    term_ids: np.ndarray
    counts: np.ndarray
    length: int


class Vocabulary:
    """Term -> integer id, growing as texts arrive (ids are never reused)."""

    def __init__(self):
        # A missing term gets the next id inside dict lookup itself (no Python loop per token).
        self._ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, tokens: Sequence[str]) -> EntryTerms:
        counts = Counter(tokens)
        ids = np.fromiter(map(self._ids.__getitem__, counts), dtype=np.int64, count=len(counts))
        freqs = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        return EntryTerms(ids, freqs, len(tokens))

    def lookup(self, tokens: Sequence[str]) -> np.ndarray:
        """Ids of the known tokens, in query order; unknown tokens are dropped."""
        ids = np.fromiter(map(self._ids.get, tokens, itertools.repeat(-1)), dtype=np.int64, count=len(tokens))
        return ids[ids >= 0]


@functools.lru_cache(maxsize=1024)
def _okapi_idf_table(n_docs: int) -> np.ndarray:
    # math.log, as rank_bm25 uses: numpy's vectorised log may differ in the last bit.
    return np.array([math.log(n_docs - df + 0.5) - math.log(df + 0.5) for df in range(n_docs + 1)])


class OkapiIndex:
    """BM25 statistics of one collection, scored exactly as `rank_bm25.BM25Okapi`.

    Every float operation of rank_bm25 is done in the same order on the same
    values, so scores are equal to the last bit: the idf of each term, their
    mean summed in order of first appearance (it sets the floor on negative
    idfs), the length normalisation, and the per-term contributions added in
    query order. Postings are kept grouped by term (CSR), so a query touches
    only its own terms.
    """

    def __init__(self, docs: Sequence[EntryTerms], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        self.k1, self.n_docs = k1, len(docs)
        postings = [d.term_ids for d in docs]
        term_ids = np.concatenate(postings) if docs else np.zeros(0, dtype=np.int64)
        counts = np.concatenate([d.counts for d in docs]) if docs else np.zeros(0, dtype=np.int64)
        doc_of = np.repeat(np.arange(self.n_docs), [len(p) for p in postings])
        # Sorting (term, position) keys groups the postings by term, earliest posting first within
        # each term; the keys are distinct, so the fast unstable sort gives that order.
        by_term = np.argsort(term_ids * max(len(term_ids), 1) + np.arange(len(term_ids)))
        sorted_ids = term_ids[by_term]
        new_term = np.ones(len(sorted_ids), dtype=bool)
        new_term[1:] = sorted_ids[1:] != sorted_ids[:-1]
        group_start = np.flatnonzero(new_term)
        self._start = np.append(group_start, len(sorted_ids))
        self.terms, self._df = sorted_ids[group_start], np.diff(self._start)
        self._doc_of, self._counts = doc_of[by_term], counts[by_term]
        self._idf = self._floored_idf(by_term[group_start], len(term_ids), epsilon)
        doc_len = np.array([d.length for d in docs], dtype=np.int64)
        avgdl = int(doc_len.sum()) / self.n_docs if self.n_docs else 0.0
        # Without any token there is no term to score, and avgdl is 0.
        self._norm = k1 * (1 - b + b * doc_len / avgdl) if avgdl > 0 else np.zeros(self.n_docs)

    def _floored_idf(self, first_seen: np.ndarray, n_postings: int, epsilon: float) -> np.ndarray:
        if not len(self.terms):
            return np.zeros(0)
        idf = _okapi_idf_table(self.n_docs)[self._df]
        # rank_bm25 adds the idfs one by one in order of first appearance. Laid out at their
        # first postings (zeros elsewhere change nothing), cumsum adds them in that order.
        laid_out = np.zeros(n_postings)
        laid_out[first_seen] = idf
        mean = np.cumsum(laid_out)[-1] / len(idf)
        return np.where(idf < 0, epsilon * mean, idf)

    def scores(self, query_ids: np.ndarray) -> np.ndarray:
        """Scores of every document for a query given as term ids (repeats count again)."""
        slot = np.searchsorted(self.terms, query_ids)
        present = slot < len(self.terms)
        present[present] = self.terms[slot[present]] == query_ids[present]
        terms = slot[present]  # one row per query token in the profile, in query order
        if not len(terms):
            return np.zeros(self.n_docs)
        tf = self._term_frequencies(terms)
        weights = self._idf[terms][:, None] * (tf * (self.k1 + 1) / (tf + self._norm))
        # rank_bm25 adds term by term in query order; cumsum is sequential (np.sum may pair up terms).
        return np.cumsum(weights, axis=0)[-1]

    def _term_frequencies(self, terms: np.ndarray) -> np.ndarray:
        """Dense (terms x documents) frequencies of the given local term indices."""
        lengths = self._df[terms]
        offsets = np.cumsum(lengths) - lengths
        postings = np.repeat(self._start[terms] - offsets, lengths) + np.arange(int(lengths.sum()))
        tf = np.zeros((len(terms), self.n_docs))
        tf[np.repeat(np.arange(len(terms)), lengths), self._doc_of[postings]] = self._counts[postings]
        return tf


def okapi_scores(
    query_tokens: list[str], docs_tokens: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25
) -> np.ndarray:
    """BM25 scores with rank_bm25.BM25Okapi's formula, idf floor included.

    A term in more than half of the documents would get a negative idf; like
    rank_bm25 we give it `epsilon * mean idf` instead.
    """
    vocab = Vocabulary()
    index = OkapiIndex([vocab.add(tokens) for tokens in docs_tokens], k1, b, epsilon)
    return index.scores(vocab.lookup(query_tokens))


class Retriever:
    """Base: subclasses implement `scores(query, profile)`."""

    name = "base"

    def __init__(self, task: Task):
        self.task = task

    def scores(self, query: str, profile: Sequence[dict]) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, queries: Sequence[str], profiles: Sequence[Sequence[dict]], show_progress: bool = True) -> None:
        """Get ready to rank these queries over these profiles (a whole split) before the calls come.
        Nothing to do here; a retriever with per-text work that batches well (dense embeddings) overrides it."""

    def __call__(self, query: str, profile: Sequence[dict], k: int) -> Retrieved:
        if k < 0:
            raise PrlmError(f"k must be >= 0, got {k}")
        if k == 0 or not profile:
            return [], []
        return _top_k(profile, self.scores(query, profile), k)


class NoRetriever(Retriever):
    name = "none"

    def __call__(self, query: str, profile: Sequence[dict], k: int) -> Retrieved:
        return [], []


class RandomRetriever(Retriever):
    name = "random"

    def __init__(self, task: Task, seed: int = 0):
        super().__init__(task)
        self.seed = seed

    def scores(self, query: str, profile: Sequence[dict]) -> np.ndarray:
        # Seeded by the query and the entry ids, so a question always draws the same entries.
        rng = random.Random(f"{self.seed}|{query}|{'|'.join(e['id'] for e in profile)}")
        return np.array([rng.random() for _ in profile])


class RecencyRetriever(Retriever):
    name = "recency"

    def scores(self, query: str, profile: Sequence[dict]) -> np.ndarray:
        out = []
        for entry in profile:
            if "date" not in entry:
                raise PrlmError(f"recency retrieval needs a 'date' on every profile entry; entry '{entry['id']}' has "
                                "none")
            try:
                out.append(date.fromisoformat(str(entry["date"])[:10]).toordinal())
            except ValueError:
                raise PrlmError(
                    f"profile entry '{entry['id']}': date '{entry['date']}' is not YYYY-MM-DD"
                ) from None
        return np.array(out, dtype=np.float64)


class BM25Retriever(Retriever):
    """Okapi BM25 as rank_bm25.BM25Okapi scores it (see `OkapiIndex`), with caches.

    Each distinct profile entry is tokenised once (keyed by its retrieval
    fields), and the index of a recently seen profile is reused, so a user's
    entries shared by several questions, or a profile queried again, cost
    little. Both caches drop their oldest items beyond `max_entries` /
    `max_profiles`, which bounds memory on large profiles.
    """

    name = "bm25"

    def __init__(self, task: Task, tokenize: Callable[[str], list[str]] = whitespace_tokenize, k1=1.5, b=0.75,
                 epsilon=0.25, max_entries: int = 100_000, max_profiles: int = 256):
        super().__init__(task)
        self.tokenize, self.k1, self.b, self.epsilon = tokenize, k1, b, epsilon
        self.max_entries, self.max_profiles = max_entries, max_profiles
        self._entry_key = operator.itemgetter(*task.retrieval_fields)
        self._vocab = Vocabulary()
        self._entries: dict = {}
        self._profiles: dict[tuple, OkapiIndex] = {}

    def index(self, profile: Sequence[dict]) -> OkapiIndex:
        keys = tuple(map(self._entry_key, profile))
        index = self._profiles.get(keys)
        if index is None:
            docs = list(map(self._entries.get, keys))
            if None in docs:
                self._tokenise_new_entries(docs, keys, profile)
            index = OkapiIndex(docs, self.k1, self.b, self.epsilon)
            _bounded_insert(self._profiles, keys, index, self.max_profiles)
        return index

    def _tokenise_new_entries(self, docs: list, keys: tuple, profile: Sequence[dict]) -> None:
        """Fill in place the entries of `docs` that the cache did not hold."""
        for i, (key, entry) in enumerate(zip(keys, profile)):
            if docs[i] is None:
                docs[i] = self._vocab.add(self.tokenize(self.task.entry_text(entry)))
                _bounded_insert(self._entries, key, docs[i], self.max_entries)

    def scores(self, query: str, profile: Sequence[dict]) -> np.ndarray:
        index = self.index(profile)
        return index.scores(self._vocab.lookup(self.tokenize(self.task.query(query))))


def _bounded_insert(cache: dict, key, value, capacity: int) -> None:
    """Insert, dropping the oldest items beyond `capacity` (dicts keep insertion order)."""
    cache[key] = value
    while len(cache) > capacity:
        del cache[next(iter(cache))]


class BM25SRetriever(Retriever):
    """The bm25s library (Lucene idf, never negative); not identical to rank_bm25."""

    name = "bm25s"

    def scores(self, query: str, profile: Sequence[dict]) -> np.ndarray:
        import bm25s

        docs = [whitespace_tokenize(self.task.entry_text(e)) for e in profile]
        index = bm25s.BM25(method="lucene")
        vocab = {w: i for i, w in enumerate(dict.fromkeys(w for d in docs for w in d))}
        index.index(bm25s.tokenization.Tokenized(ids=[[vocab[w] for w in d] for d in docs], vocab=vocab),
                    show_progress=False)
        query_ids = [vocab[w] for w in whitespace_tokenize(self.task.query(query)) if w in vocab]
        if not query_ids:
            return np.zeros(len(profile))
        return np.asarray(index.get_scores(query_ids), dtype=np.float64)


class DenseRetriever(Retriever):
    """Cosine similarity of sentence embeddings; embeddings are cached by text
    unless `cache_embeddings` is false (then every call encodes its texts, as
    LaMP's retrieval script does).

    The cache belongs to this instance: a caller that must keep users apart
    (the server) makes one instance per user, sharing the loaded encoder through
    `model`. `max_cached` bounds it (least recently used texts go first; None:
    unbounded, as evaluation over a fixed split wants), and `forget` purges it.
    """

    name = "dense"

    def __init__(self, task: Task, encoder: str = "minilm", device: str = "cpu", batch_size: int = 64,
                 cache_embeddings: bool = True, model=None, max_cached: int | None = None):
        """`model`: an already loaded encoder to use (e.g. shared by several retrievers)."""
        super().__init__(task)
        if max_cached is not None and max_cached < 1:
            raise PrlmError(f"max_cached must be at least 1 (or None for no bound), got {max_cached}")
        self.encoder_name, self.device, self.batch_size = encoder, device, batch_size
        self.cache_embeddings, self.max_cached = cache_embeddings, max_cached
        self._model = model
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def model(self):
        if self._model is None:
            from prlm.models import load_encoder

            self._model = load_encoder(self.encoder_name, device=self.device)
        return self._model

    @property
    def cached_texts(self) -> list[str]:
        return list(self._cache)

    def forget(self, keep=None) -> None:
        """Drop cached embeddings: all of them, or all but the texts in `keep`."""
        if keep is None:
            self._cache.clear()
            return
        keep = set(keep)
        for text in [t for t in self._cache if t not in keep]:
            del self._cache[text]

    def uncached(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts among `texts` that `embed` would have to encode."""
        return [t for t in dict.fromkeys(texts) if t not in self._cache]

    def embed(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        missing = self.uncached(texts)
        found = {}
        if missing:
            vectors = self.model.encode(
                missing, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=show_progress,
            )
            found = dict(zip(missing, vectors))
        embedded = np.stack([found[t] if t in found else self._cache[t] for t in texts])
        if self.cache_embeddings and self.max_cached is None:
            self._cache.update(found)  # unbounded (evaluation): no order to keep
        elif self.cache_embeddings:
            for text in dict.fromkeys(texts):  # the texts of this call become the most recently used
                self._cache[text] = found[text] if text in found else self._cache[text]
                self._cache.move_to_end(text)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        else:
            self._cache.clear()
        return embedded

    def prepare(self, queries: Sequence[str], profiles: Sequence[Sequence[dict]], show_progress: bool = True) -> None:
        """Embed every text of a split in a few large batches before retrieving."""
        texts = [self.task.query(q) for q in queries]
        texts += [self.task.entry_text(e) for p in profiles for e in p]
        if texts:
            self.embed(texts, show_progress=show_progress)

    def scores(self, query: str, profile: Sequence[dict]) -> np.ndarray:
        q = self.embed([self.task.query(query)])[0]
        return self.embed([self.task.entry_text(e) for e in profile]) @ q


def make_retriever(method: str, task: Task, seed: int = 0, encoder: str = "minilm", device: str = "cpu") -> Retriever:
    if method == "none":
        return NoRetriever(task)
    if method == "random":
        return RandomRetriever(task, seed=seed)
    if method == "recency":
        return RecencyRetriever(task)
    if method == "bm25":
        return BM25Retriever(task)
    if method == "bm25s":
        return BM25SRetriever(task)
    if method == "dense":
        return DenseRetriever(task, encoder=encoder, device=device)
    raise PrlmError(f"unknown retriever '{method}'; use one of {', '.join(METHODS)}")


def ranking_key(query: str, profile: Sequence[dict]) -> str:
    """Identifies a (query, profile) pair in a stored ranking."""
    import hashlib

    return hashlib.sha256("\x1f".join([query, *(e["id"] for e in profile)]).encode()).hexdigest()[:20]


class RankedRetriever(Retriever):
    """Serves rankings computed once by another retriever (`rankings`: key ->
    [(entry id, score)], best first), so that every k and method of a sweep
    sees the same entries without retrieving again. Retrievers sort stably,
    so the top k is the first k of a longer ranking."""

    def __init__(self, task: Task, name: str, rankings: dict[str, list[tuple[str, float]]]):
        super().__init__(task)
        self.name, self.rankings = name, rankings

    def __call__(self, query: str, profile: Sequence[dict], k: int) -> Retrieved:
        ranking = self.rankings.get(ranking_key(query, profile))
        if ranking is None:
            raise PrlmError(f"no stored '{self.name}' ranking for a question of this split; "
                            "the retrieval cache is out of date: rerun its retrieval stage")
        if k > len(ranking) and len(ranking) < len(profile):
            raise PrlmError(f"stored '{self.name}' rankings hold {len(ranking)} entries, {k} asked; "
                            "rerun the retrieval stage with a larger k")
        by_id = {e["id"]: e for e in profile}
        top = ranking[:k]
        return [by_id[i] for i, _ in top], [s for _, s in top]


# --- the questions a stage reads and what each one retrieves --------------------

@dataclass
class ProfileDataConfig:
    """The questions a stage reads and the profile entries each one sees;
    shared by evaluation, reward-model pairs and training."""

    task: str = opt("commit-subject", "Task name from the task table (LaMP-4, LaMP-5, LaMP-7, commit-subject, "
                                      "synthetic).")
    data: str = opt("", "Dataset folder in LaMP's layout ({split}_questions.json and {split}_outputs.json).")
    split: str = opt("dev", "Split to read: train, dev or test.")
    retriever: str = opt("bm25", "Profile retriever: none, random, recency, bm25, bm25s, dense.")
    k: int = opt(4, "Profile entries retrieved per question.")
    encoder: str = opt("minilm", "Encoder for dense retrieval: 'minilm' (embedded), a local folder or a Hugging Face "
                                 "id.")
    limit: int = opt(0, "Use only the first N questions of the split (0 = all).")
    allow_empty_profiles: bool = opt(False, "Accept questions whose profile is empty.")

    def __post_init__(self):
        from prlm.data.lamp import SPLITS
        from prlm.data.tasks import get_task

        get_task(self.task)
        check_choice("split", self.split, SPLITS)
        check_choice("retriever", self.retriever, METHODS)
        if not self.data:
            raise PrlmError("data is required: pass --data DIR (a folder in LaMP's layout)")
        if self.k < 0:
            raise PrlmError(f"k must be >= 0, got {self.k}")
        if self.limit < 0:
            raise PrlmError(f"limit must be >= 0 (0 = all), got {self.limit}")


# --- rankings computed once ----------------------------------------------------------------------------------

def retrieve_each(retriever: Retriever, examples: Sequence, k: int) -> list[Retrieved]:
    """The top-k (entries, scores) of every question of `examples` (a split's questions: `.input`,
    `.profile`), the retriever prepared once for all of them."""
    retriever.prepare([ex.input for ex in examples], [ex.profile for ex in examples])
    return [retriever(ex.input, ex.profile, k) for ex in examples]


def retrieve_split(retriever: Retriever, examples: Sequence, depth: int) -> list[dict]:
    """Rank every question's profile once, the top `depth` with scores: one row per question,
    `{"id", "key": ranking_key(input, profile), "ranking": [[entry id, score], ...]}` (scores to 6 decimals)."""
    return [{"id": ex.id, "key": ranking_key(ex.input, ex.profile),
             "ranking": [[e["id"], round(s, 6)] for e, s in zip(entries, scores)]}
            for ex, (entries, scores) in zip(examples, retrieve_each(retriever, examples, depth))]


def save_rankings(path, rows: Sequence[dict]) -> None:
    """Write the rows of `retrieve_split` as JSONL (atomically)."""
    from prlm.io import atomic_write_jsonl

    atomic_write_jsonl(path, rows)


def load_rankings(*paths) -> dict[str, list[tuple[str, float]]]:
    """key -> [(entry id, score)] from one or more files of `save_rankings` (e.g. the splits of a dataset)."""
    from prlm.io import read_jsonl

    return {r["key"]: [(i, s) for i, s in r["ranking"]] for path in paths for r in read_jsonl(path)}


def ranked_retriever(task: Task, name: str, *paths) -> RankedRetriever:
    """A `RankedRetriever` named `name` serving the rankings stored in `paths` (see `save_rankings`)."""
    return RankedRetriever(task, name, load_rankings(*paths))
