"""Retrieval, prompt, generation and answer parsing for the server.

The same functions as evaluation (`make_retriever` and `Retriever.prepare`,
`build_prompt`, `HFGenerator.generate`, `answers.parse_completion`); only the profile comes from the
store, through `ProfileIndex`, which rebuilds a user's index whenever the
store's version for that user moved.

Nothing derived from one user's profile is shared with another user: every
retriever that caches (BM25's tokenised entries, dense embeddings) lives in
that user's index, and the index holds only the entries of its version, so a
deleted entry's embedding is dropped when the index is rebuilt (at once by
`ProfileIndex.refresh` after a delete on this server). A cache shared across
users is a timing side channel: a user could tell whether someone else's
profile holds a text by how fast retrieval over that text is.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

from prlm.answers import parse_completion, stop_strings
from prlm.data.tasks import Task, get_task
from prlm.generation import SamplingParams
from prlm.prompts import build_prompt
from prlm.retrieval import BM25Retriever, DenseRetriever, Retriever, make_retriever

# Retrievers that keep per-profile state (caches): one instance per user index, never shared.
PER_USER_RETRIEVERS = ("bm25", "dense")
# Query embeddings a user's dense cache keeps besides its entries (their own recent queries).
DENSE_QUERY_SLACK = 32


@dataclass
class _Index:
    version: int
    entries: list[dict]
    retrievers: dict[str, Retriever] = field(default_factory=dict)
    """This user's own retriever instances (their caches hold only this user's texts)."""
    built_with: set[str] = field(default_factory=set)
    """Retrievers prepared for this version (`Retriever.prepare`: a dense one's entry embeddings computed)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while this index's own BM25 retriever runs: its caches are plain dicts."""


class ProfileIndex:
    """Per (user, task): the entries of the store's current version, LRU-bounded.

    Every lookup reads the user's version (one indexed row); a changed version
    rebuilds from a consistent snapshot, so a request never sees a profile older
    than the last write acknowledged before it arrived. Bounded twice: at most
    `capacity` indexes and `max_entries` entries over all of them (the oldest
    used go first).
    """

    def __init__(self, store, capacity: int = 4096, max_entries: int = 100_000):
        self.store, self.capacity, self.max_entries = store, capacity, max_entries
        self._cache: OrderedDict[tuple[str, str], _Index] = OrderedDict()
        self._lock = threading.Lock()
        # Held while a user's retrievers run or are carried over to a new version: the dense encoder's
        # tokenizer is not safe across threads, and retriever caches are plain dicts.
        self.retrieval_lock = threading.Lock()
        self.rebuilds = 0

    def get(self, user_id: str, task: str) -> _Index:
        key = (user_id, task)
        current = self.store.version(user_id)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit.version == current:
                self._cache.move_to_end(key)
                return hit
        return self._rebuild(key)

    def _rebuild(self, key: tuple[str, str]) -> _Index:
        version, entries = self.store.snapshot(*key)
        index = _Index(version, entries)
        with self.retrieval_lock, self._lock:
            old = self._cache.get(key)
            if old is None or old.version <= version:  # a concurrent rebuild may already hold a newer one
                if old is not None:
                    _carry_embeddings(old, index)
                self._cache[key] = index
                self._cache.move_to_end(key)
                self.rebuilds += 1
            self._evict()
        return index

    def _evict(self) -> None:
        total = sum(len(i.entries) for i in self._cache.values())
        while len(self._cache) > 1 and (len(self._cache) > self.capacity or total > self.max_entries):
            _, dropped = self._cache.popitem(last=False)
            total -= len(dropped.entries)

    def refresh(self, user_id: str) -> None:
        """Rebuild this user's cached indexes now (after a delete): the deleted entries' data goes at once."""
        with self._lock:
            keys = [k for k in self._cache if k[0] == user_id]
        for key in keys:
            self._rebuild(key)

    def forget(self, user_id: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == user_id]:
                del self._cache[key]

    def cached(self, user_id: str, task: str) -> _Index | None:
        with self._lock:
            return self._cache.get((user_id, task))


def _carry_embeddings(old: _Index, new: _Index) -> None:
    """A new version of the same user's profile keeps the embeddings of the entries it still holds
    (an add embeds only the new entries); everything else, deleted entries included, is dropped."""
    old_dense = old.retrievers.get("dense")
    if not isinstance(old_dense, DenseRetriever):
        return
    carried = DenseRetriever(old_dense.task, encoder=old_dense.encoder_name, model=old_dense._model,
                             max_cached=len(new.entries) + DENSE_QUERY_SLACK)
    keep = {old_dense.task.entry_text(e) for e in new.entries}
    carried._cache.update((t, v) for t, v in old_dense._cache.items() if t in keep)
    new.retrievers["dense"] = carried


@dataclass
class Prepared:
    task: Task
    text: str
    entries: list[dict]
    scores: list[float]
    retrieval_ms: float


@dataclass
class Generated:
    answer: str
    reasoning: str
    completion: str
    retrieved: list[dict]
    prompt_tokens: int
    prompt_ms: float


class Engine:
    def __init__(self, store, generator, tokenizer, method: str, max_prompt_tokens: int, max_new_tokens: int,
                 temperature: float = 0.0, seed: int = 0, encoder: str = "minilm",
                 index_max_entries: int = 100_000):
        self.generator, self.tokenizer, self.method = generator, tokenizer, method
        self.max_prompt_tokens, self.seed, self.encoder = max_prompt_tokens, seed, encoder
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                     stop=stop_strings(method))
        self.index = ProfileIndex(store, max_entries=index_max_entries)
        self._retrievers: dict[tuple[str, str], Retriever] = {}
        self._retriever_lock = threading.Lock()
        self._encoder = None

    def encoder_model(self):
        """The sentence encoder, loaded once and shared by every user's dense retriever (it holds no user data)."""
        with self._retriever_lock:
            if self._encoder is None:
                from prlm import models

                self._encoder = models.load_encoder(self.encoder)
            return self._encoder

    def retriever(self, name: str, task: Task, index: _Index) -> Retriever:
        """The retriever for one request: the user's own instance for those that cache, else a shared one."""
        if name in PER_USER_RETRIEVERS:
            with self._retriever_lock:
                found = index.retrievers.get(name)
            if found is not None:
                return found
            if name == "dense":
                made = DenseRetriever(task, encoder=self.encoder, model=self.encoder_model(),
                                      max_cached=len(index.entries) + DENSE_QUERY_SLACK)
            else:
                made = BM25Retriever(task, max_profiles=2)
            with self._retriever_lock:
                return index.retrievers.setdefault(name, made)
        with self._retriever_lock:
            key = (name, task.name)
            if key not in self._retrievers:
                self._retrievers[key] = make_retriever(name, task, seed=self.seed, encoder=self.encoder)
            return self._retrievers[key]

    def retrieve(self, user_id: str, task_name: str, text: str, retriever_name: str, k: int) -> Prepared:
        """The top-k of this user's entries for `task` (runs on a request thread)."""
        started = time.perf_counter()
        task = get_task(task_name)
        index = self.index.get(user_id, task.name)
        retriever = self.retriever(retriever_name, task, index)
        with self._retrieval_lock(retriever_name, index):
            if retriever_name not in index.built_with:  # per-entry work (embeddings) once per version
                retriever.prepare([], [index.entries], show_progress=False)
                index.built_with.add(retriever_name)
            entries, scores = retriever(text, index.entries, k)
        return Prepared(task, text, entries, scores, (time.perf_counter() - started) * 1000)

    def _retrieval_lock(self, retriever_name: str, index: _Index):
        """Dense retrieval holds the global lock: every user's dense retriever shares the encoder, whose
        tokenizer is not safe across threads. A user's BM25 holds that user's lock only (its own instance:
        users do not wait for each other). The shared retrievers keep no state."""
        if retriever_name == "dense":
            return self.index.retrieval_lock
        if retriever_name in PER_USER_RETRIEVERS:
            return index.lock
        return nullcontext()

    def run_batch(self, batch: Sequence[Prepared]) -> list[Generated]:
        """Prompts, one generation call, parsing (runs on the single generation thread)."""
        started = time.perf_counter()
        prompts = [build_prompt(p.task, p.text, p.entries, self.method, self.tokenizer, self.max_prompt_tokens)
                   for p in batch]
        prompt_ms = (time.perf_counter() - started) * 1000 / len(batch)
        completions = self.generator.generate([p.text for p in prompts], self.params, progress=False)
        out = []
        for prep, prompt, completion in zip(batch, prompts, completions):
            parsed = parse_completion(completion[0], self.method, prep.task, prefill=prompt.prefill)
            used = prompt.entries_used  # entries that the token budget dropped were not seen by the model
            retrieved = [{"id": e["id"], "score": round(s, 6)}
                         for e, s in zip(prep.entries[:used], prep.scores[:used])]
            out.append(Generated(parsed.answer, parsed.reasoning, completion[0], retrieved, prompt.num_tokens,
                                 prompt_ms))
        return out
