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
# Texts the shared encoder embeds under its lock at a time: another user's query waits at most one chunk.
ENCODE_CHUNK = 16
# Memory an index takes per byte of entry text, beyond the text itself: Python's objects for the entry
# dicts and BM25's tokenised copies (issue 26's probe: 2,000 entries of 8 KB added 128 MB, 8 bytes a byte).
BYTES_PER_TEXT_BYTE = 8
# One cached embedding: minilm's 384 float32 and the array and cache entry around them.
BYTES_PER_EMBEDDING = 2048


class IndexBuilding(Exception):
    """A request would embed more entries than one request may (`max_embed_per_request`): it embedded that
    many, kept them, and the API answers 429 with Retry-After; the next request goes on from there."""

    def __init__(self, remaining: int):
        super().__init__(f"this profile's dense index is being built: {remaining} entries still to embed; "
                         "retry shortly (each request embeds a bounded share)")
        self.remaining = remaining


class FairLock:
    """A lock taken in the order it was asked for. threading.Lock is not: a thread that releases it and asks
    again at once (a build going from one chunk to the next) mostly gets it straight back."""

    def __init__(self):
        self._cond = threading.Condition()
        self._next_ticket = self._serving = 0

    def __enter__(self):
        with self._cond:
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            self._cond.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc):
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class SharedEncoder:
    """The one sentence encoder all users' dense retrievers share, used by one thread at a time (its
    tokenizer is not safe across threads), a chunk of `chunk` texts per turn: a user whose index is
    being built holds it for one chunk, then everyone waiting gets a turn. It holds no user data."""

    def __init__(self, model, chunk: int = ENCODE_CHUNK):
        self.model, self.chunk = model, chunk
        self._lock = FairLock()

    def encode(self, texts, **kwargs):
        import numpy as np

        parts = []
        for start in range(0, len(texts), self.chunk):
            with self._lock:
                parts.append(self.model.encode(list(texts[start:start + self.chunk]), **kwargs))
        return np.concatenate(parts) if parts else self.model.encode([], **kwargs)


@dataclass
class _Index:
    version: int
    entries: list[dict]
    retrievers: dict[str, Retriever] = field(default_factory=dict)
    """This user's own retriever instances (their caches hold only this user's texts)."""
    built_with: set[str] = field(default_factory=set)
    """Retrievers prepared for this version (`Retriever.prepare`: a dense one's entry embeddings computed)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while this index's own retrievers run or are carried to a new version: their caches are plain
    dicts. Only this user's requests ever wait on it."""
    text_bytes: int = 0

    def __post_init__(self):
        self.text_bytes = sum(len(v) for e in self.entries for v in e.values() if isinstance(v, str))

    def nbytes(self) -> int:
        """What this index holds in memory, estimated: its entries (and what BM25 derives from them) and
        its dense embeddings."""
        dense = self.retrievers.get("dense")
        # len() only: another thread may be adding embeddings to this cache (under this index's lock).
        vectors = len(dense._cache) * BYTES_PER_EMBEDDING if isinstance(dense, DenseRetriever) else 0
        return self.text_bytes * (1 + BYTES_PER_TEXT_BYTE) + vectors


class ProfileIndex:
    """Per (user, task): the entries of the store's current version, LRU-bounded.

    Every lookup reads the user's version (one indexed row); a changed version
    rebuilds from a consistent snapshot, so a request never sees a profile older
    than the last write acknowledged before it arrived. Bounded twice: at most
    `capacity` indexes and `max_bytes` of memory (`_Index.nbytes`) over all of
    them (the oldest used go first).

    No lock here is shared across users for longer than a dict operation: a
    rebuild waits only on that user's own index (`_Index.lock`), so one user
    building a large index stalls nobody else.
    """

    def __init__(self, store, capacity: int = 4096, max_bytes: int = 1 << 30):
        self.store, self.capacity, self.max_bytes = store, capacity, max_bytes
        self._cache: OrderedDict[tuple[str, str], _Index] = OrderedDict()
        self._lock = threading.Lock()  # the dict only; never held while anything else runs
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
        with self._lock:
            old = self._cache.get(key)
        if old is not None and old.version <= version:
            with old.lock:  # this user's own retrieval on the old version may be running: wait for it only
                _carry_embeddings(old, index)
        with self._lock:
            old = self._cache.get(key)
            if old is None or old.version <= version:  # a concurrent rebuild may already hold a newer one
                self._cache[key] = index
                self._cache.move_to_end(key)
                self.rebuilds += 1
            self._evict()
        return index

    def trim(self) -> None:
        """Evict to the bounds again (an index grows when its dense embeddings are computed)."""
        with self._lock:
            self._evict()

    def _evict(self) -> None:
        total = sum(i.nbytes() for i in self._cache.values())
        while len(self._cache) > 1 and (len(self._cache) > self.capacity or total > self.max_bytes):
            _, dropped = self._cache.popitem(last=False)
            total -= dropped.nbytes()

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
                 index_max_bytes: int = 1 << 30, max_embed_per_request: int = 256):
        self.generator, self.tokenizer, self.method = generator, tokenizer, method
        self.max_prompt_tokens, self.seed, self.encoder = max_prompt_tokens, seed, encoder
        self.max_embed_per_request = max_embed_per_request
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                     stop=stop_strings(method))
        self.index = ProfileIndex(store, max_bytes=index_max_bytes)
        self._retrievers: dict[tuple[str, str], Retriever] = {}
        self._retriever_lock = threading.Lock()
        self._encoder: SharedEncoder | None = None

    def encoder_model(self) -> SharedEncoder:
        """The sentence encoder, loaded once and shared by every user's dense retriever (it holds no user data)."""
        with self._retriever_lock:
            if self._encoder is None:
                from prlm import models

                self._encoder = SharedEncoder(models.load_encoder(self.encoder))
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
        """The top-k of this user's entries for `task` (runs on a request thread). Waits only on this user's
        own index; IndexBuilding when the entries left to embed exceed one request's share."""
        started = time.perf_counter()
        task = get_task(task_name)
        index = self.index.get(user_id, task.name)
        retriever = self.retriever(retriever_name, task, index)
        with index.lock if retriever_name in PER_USER_RETRIEVERS else nullcontext():
            if retriever_name not in index.built_with:  # per-entry work (embeddings) once per version
                self._prepare(retriever, index)
                index.built_with.add(retriever_name)
            entries, scores = retriever(text, index.entries, k)
        if retriever_name == "dense":
            self.index.trim()
        return Prepared(task, text, entries, scores, (time.perf_counter() - started) * 1000)

    def _prepare(self, retriever: Retriever, index: _Index) -> None:
        """Embed a dense index's entries, at most `max_embed_per_request` of them per request: what was
        embedded stays in the user's cache, so the build goes on where the last request left it."""
        if isinstance(retriever, DenseRetriever):
            todo = retriever.uncached([retriever.task.entry_text(e) for e in index.entries])
            if len(todo) > self.max_embed_per_request:
                retriever.embed(todo[:self.max_embed_per_request])
                raise IndexBuilding(len(todo) - self.max_embed_per_request)
        retriever.prepare([], [index.entries], show_progress=False)

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
