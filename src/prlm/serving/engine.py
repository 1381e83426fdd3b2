"""Retrieval, prompt, generation and answer parsing for the server.

The same functions as evaluation (`make_retriever`, `build_prompt`,
`HFGenerator.generate`, `parse_completion`); only the profile comes from the
store, through `ProfileIndex`, which rebuilds a user's index whenever the
store's version for that user moved.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from prlm.data.tasks import Task, get_task
from prlm.generation import SamplingParams
from prlm.prompts import build_prompt, parse_completion
from prlm.retrieval import DenseRetriever, Retriever, make_retriever


@dataclass
class _Index:
    version: int
    entries: list[dict]
    built_with: set[str] = field(default_factory=set)
    """Retrievers whose per-entry data (embeddings) were computed for this version."""


class ProfileIndex:
    """Per (user, task): the entries of the store's current version, LRU-bounded.

    Every lookup reads the user's version (one indexed row); a changed version
    rebuilds from a consistent snapshot, so a request never sees a profile older
    than the last write acknowledged before it arrived.
    """

    def __init__(self, store, capacity: int = 4096):
        self.store, self.capacity = store, capacity
        self._cache: OrderedDict[tuple[str, str], _Index] = OrderedDict()
        self._lock = threading.Lock()
        self.rebuilds = 0

    def get(self, user_id: str, task: str) -> _Index:
        key = (user_id, task)
        current = self.store.version(user_id)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit.version == current:
                self._cache.move_to_end(key)
                return hit
        version, entries = self.store.snapshot(user_id, task)
        index = _Index(version, entries)
        with self._lock:
            old = self._cache.get(key)
            if old is None or old.version <= version:  # a concurrent rebuild may already hold a newer one
                self._cache[key] = index
                self._cache.move_to_end(key)
                self.rebuilds += 1
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return index


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
                 temperature: float = 0.0, seed: int = 0, encoder: str = "minilm"):
        self.generator, self.tokenizer, self.method = generator, tokenizer, method
        self.max_prompt_tokens, self.seed, self.encoder = max_prompt_tokens, seed, encoder
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                     stop=["</answer>"] if method == "prlm" else [])
        self.index = ProfileIndex(store)
        self._retrievers: dict[tuple[str, str], Retriever] = {}
        self._retriever_lock = threading.Lock()
        # The dense encoder's tokenizer is not safe across threads; BM25 and the others are pure.
        self._dense_lock = threading.Lock()

    def retriever(self, name: str, task: Task) -> Retriever:
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
        retriever = self.retriever(retriever_name, task)
        if isinstance(retriever, DenseRetriever):
            with self._dense_lock:
                if retriever_name not in index.built_with:  # embed the new version's entries once
                    if index.entries:
                        retriever.embed([task.entry_text(e) for e in index.entries])
                    index.built_with.add(retriever_name)
                entries, scores = retriever(text, index.entries, k)
        else:
            entries, scores = retriever(text, index.entries, k)
        return Prepared(task, text, entries, scores, (time.perf_counter() - started) * 1000)

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
            retrieved = [{"id": e["id"], "score": round(s, 6)} for e, s in zip(prep.entries[:used], prep.scores[:used])]
            out.append(Generated(parsed.answer, parsed.reasoning, completion[0], retrieved, prompt.num_tokens, prompt_ms))
        return out
