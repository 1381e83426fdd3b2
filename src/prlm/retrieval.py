"""Retrieval over one user's profile: `retriever(query, profile, k) -> (entries, scores)`.

Methods: `none`, `random` (seeded), `recency` (newest first), `bm25` (Okapi
BM25 scored exactly as `rank_bm25.BM25Okapi`, LaMP's reference, vectorised),
`bm25s` (the bm25s library, Lucene idf), `dense` (a sentence-transformers
encoder, cosine similarity). Retrievers are pure given their inputs: the same
query and profile always give the same entries.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import date
from typing import Callable, Sequence

import numpy as np

from prlm import PrlmError
from prlm.data.tasks import Task

METHODS = ("none", "random", "recency", "bm25", "bm25s", "dense")

Retrieved = tuple[list[dict], list[float]]


def whitespace_tokenize(text: str) -> list[str]:
    """LaMP's tokenization for BM25: split on whitespace, nothing else."""
    return text.split()


def _top_k(profile: Sequence[dict], scores: np.ndarray, k: int) -> Retrieved:
    # Stable sort: ties keep profile order, so results are reproducible.
    order = np.argsort(-scores, kind="stable")[:k]
    return [profile[i] for i in order], [float(scores[i]) for i in order]


def okapi_scores(
    query_tokens: list[str], docs_tokens: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25
) -> np.ndarray:
    """BM25 scores with rank_bm25.BM25Okapi's formula, idf floor included.

    A term in more than half of the documents would get a negative idf; like
    rank_bm25 we give it `epsilon * mean idf` instead.
    """
    n_docs = len(docs_tokens)
    if n_docs == 0:
        return np.zeros(0)
    counts = [Counter(tokens) for tokens in docs_tokens]
    doc_len = np.array([len(tokens) for tokens in docs_tokens], dtype=np.float64)
    doc_freq: Counter = Counter()
    for c in counts:
        doc_freq.update(c.keys())
    idf = {w: math.log(n_docs - df + 0.5) - math.log(df + 0.5) for w, df in doc_freq.items()}
    floor = epsilon * (sum(idf.values()) / len(idf)) if idf else 0.0
    idf = {w: (v if v >= 0 else floor) for w, v in idf.items()}
    norm = k1 * (1 - b + b * doc_len / max(doc_len.mean(), 1e-9))
    scores = np.zeros(n_docs)
    for term in query_tokens:  # repeated query terms count again, as in rank_bm25
        if term not in idf:
            continue
        tf = np.array([c.get(term, 0) for c in counts], dtype=np.float64)
        scores += idf[term] * tf * (k1 + 1) / (tf + norm)
    return scores


class Retriever:
    """Base: subclasses implement `scores(query, profile)`."""

    name = "base"

    def __init__(self, task: Task):
        self.task = task

    def scores(self, query: str, profile: Sequence[dict]) -> np.ndarray:
        raise NotImplementedError

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
                raise PrlmError(f"recency retrieval needs a 'date' on every profile entry; entry '{entry['id']}' has none")
            try:
                out.append(date.fromisoformat(str(entry["date"])[:10]).toordinal())
            except ValueError:
                raise PrlmError(
                    f"profile entry '{entry['id']}': date '{entry['date']}' is not YYYY-MM-DD"
                ) from None
        return np.array(out, dtype=np.float64)


class BM25Retriever(Retriever):
    name = "bm25"

    def __init__(self, task: Task, tokenize: Callable[[str], list[str]] = whitespace_tokenize, k1=1.5, b=0.75):
        super().__init__(task)
        self.tokenize, self.k1, self.b = tokenize, k1, b

    def scores(self, query: str, profile: Sequence[dict]) -> np.ndarray:
        docs = [self.tokenize(self.task.entry_text(e)) for e in profile]
        return okapi_scores(self.tokenize(self.task.query(query)), docs, self.k1, self.b)


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
    """Cosine similarity of sentence embeddings; embeddings are cached by text."""

    name = "dense"

    def __init__(self, task: Task, encoder: str = "minilm", device: str = "cpu", batch_size: int = 64):
        super().__init__(task)
        self.encoder_name, self.device, self.batch_size = encoder, device, batch_size
        self._model = None
        self._cache: dict[str, np.ndarray] = {}

    @property
    def model(self):
        if self._model is None:
            from prlm.models import load_encoder

            self._model = load_encoder(self.encoder_name, device=self.device)
        return self._model

    def embed(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = self.model.encode(
                missing, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=show_progress,
            )
            self._cache.update(zip(missing, vectors))
        return np.stack([self._cache[t] for t in texts])

    def prepare(self, queries: Sequence[str], profiles: Sequence[Sequence[dict]]) -> None:
        """Embed every text of a split in a few large batches before retrieving."""
        texts = [self.task.query(q) for q in queries]
        texts += [self.task.entry_text(e) for p in profiles for e in p]
        self.embed(texts, show_progress=True)

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
