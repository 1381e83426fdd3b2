"""Helpers for the serving tests: a config, an app over a fresh database, a real server on a thread.

The fixtures they share are in conftest.py beside this file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

ADMIN = "admin-token-for-tests-0123456789"
TASK = "synthetic"


def entry(entry_id: str, title: str, text: str, date: str = "2024-01-01") -> dict:
    return {"id": entry_id, "title": title, "text": text, "date": date}


def serve_config(db: Path, **overrides):
    from prlm.serving.config import ServeConfig

    values = dict(db=str(db), model="tiny", max_new_tokens=8, batch_window_ms=5.0, max_prompt_tokens=512)
    values.update(overrides)
    return ServeConfig(**values)


def make_app(db: Path, generator, tokenizer, **overrides):
    from prlm.serving.app import create_app
    from prlm.serving.store import SQLiteProfileStore

    cfg = serve_config(db, **overrides)
    store = SQLiteProfileStore(cfg.db)
    return create_app(cfg, store, ADMIN, generator=generator, tokenizer=tokenizer, model_name="tiny"), store


def provision(client, user_id: str) -> dict:
    """Create a user with the admin token; returns the Authorization header of their token."""
    r = client.post("/v1/users", json={"user_id": user_id}, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    return bearer(r.json()["token"])


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class ThreadedServer:
    """uvicorn serving `app` on a free loopback port, on a thread of this process."""

    def __init__(self, app, listen: bool = False):
        """`listen`: with what `prlm serve` listens with (`uvicorn_options` of the app's config: the request
        head deadline, the connection cap, TLS), else uvicorn's defaults."""
        import uvicorn

        from prlm.serving.client import free_port

        self.port = free_port()
        options = {}
        if listen:
            from prlm.serving.app import uvicorn_options

            options = uvicorn_options(app.state.prlm.cfg)
        options.update(host="127.0.0.1", port=self.port, log_level="warning")
        scheme = "https" if options.get("ssl_certfile") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


class SlowEncoder:
    """A stand-in sentence encoder: deterministic unit vectors, `seconds` per text (a real encoder's cost,
    without its weights), and a record of every text it encoded; `calls` counts calls as they start.

    `hold(marker)` makes every call with a text containing `marker` wait, until `let_through(n)` lets n of
    them go on or `release()` lets all: a build that lasts exactly as long as the test needs, so "nothing
    waited on it" is shown without timing anything."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.calls, self.encoded = seconds, 0, []
        self._held_marker, self._permits = None, threading.Semaphore(0)
        self.held_calls = self.held_now = 0  # held calls that have started waiting; that wait now

    def hold(self, marker: str) -> None:
        self._held_marker = marker

    def let_through(self, n: int = 1) -> None:
        self._permits.release(n)

    def release(self) -> None:
        self._held_marker = None
        self._permits.release(10_000)  # more than any test holds: every waiting call goes on

    def encode(self, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False):
        import hashlib

        import numpy as np

        self.calls += 1
        if self._held_marker and any(self._held_marker in t for t in texts):
            self.held_calls += 1
            self.held_now += 1
            if not self._permits.acquire(timeout=120):
                raise TimeoutError("SlowEncoder: held texts were never let through (call release() in a finally)")
            self.held_now -= 1
        time.sleep(self.seconds * len(texts))
        self.encoded.extend(texts)
        out = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8).astype(np.float32) - 127.5
               for t in texts]
        return np.stack([v / np.linalg.norm(v) for v in out]) if out else np.zeros((0, 32), np.float32)
