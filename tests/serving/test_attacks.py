"""What a stranger or another user can do to the server (issue 16): each test is one probe that once worked.

Loopback only; every load is bounded in count and time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import stat
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import ADMIN, TASK, ThreadedServer, bearer, entry, make_app, provision

SECRET = "zqx the mayor resigns over the harbor deal"


class CountingEncoder:
    """A stand-in sentence encoder: deterministic unit vectors, and a record of every text it encoded
    (the work a request costs, which is what its timing would show)."""

    def __init__(self):
        self.encoded: list[str] = []

    def encode(self, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False):
        self.encoded.extend(texts)
        out = []
        for t in texts:
            v = np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8).astype(np.float32) - 127.5
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


@pytest.fixture
def dense_server(tmp_path, tiny_generator, monkeypatch):
    import prlm.models

    encoder = CountingEncoder()
    monkeypatch.setattr(prlm.models, "load_encoder", lambda *a, **k: encoder)
    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator, retriever="dense")
    with TestClient(app) as client:
        yield client, app, encoder
    store.close()


def _work_of(client, encoder, path, headers, body):
    """(status, body, texts encoded while answering): the cost of the request, deterministic."""
    before = len(encoder.encoded)
    started = time.perf_counter()
    r = client.post(path, headers=headers, json=body)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return r, encoder.encoded[before:], elapsed_ms


# --- 1. the side channel ----------------------------------------------------------------------------

def test_no_cross_user_side_channel_through_the_embedding_cache(dense_server):
    client, app, encoder = dense_server
    bob, alice, carol = provision(client, "bob"), provision(client, "alice"), provision(client, "carol")
    victim = entry("b1", "Mayor quits", SECRET)
    assert client.post("/v1/users/bob/entries", headers=bob,
                       json={"task": TASK, "entries": [victim]}).status_code == 201
    r = client.post("/v1/users/bob/generate", headers=bob, json={"task": TASK, "input": "harbor news", "k": 1})
    assert r.status_code == 200 and SECRET in " ".join(encoder.encoded)  # bob's entry is embedded (and was cached)

    # Alice guesses bob's text right, carol wrong; each puts the guess in their own profile and retrieves.
    right, wrong = entry("g", "Mayor quits", SECRET), entry("g", "Mayor quits", SECRET.replace("mayor", "baker"))
    measured = {}
    for user, headers, guess in (("alice", alice, right), ("carol", carol, wrong)):
        assert client.post(f"/v1/users/{user}/entries", headers=headers,
                           json={"task": TASK, "entries": [guess]}).status_code == 201
        r, work, ms = _work_of(client, encoder, f"/v1/users/{user}/generate", headers,
                               {"task": TASK, "input": "harbor news", "k": 1})
        assert r.status_code == 200
        measured[user] = (len(work), ms)
        # The guess was embedded for this request: nothing from bob's profile made it cheaper.
        assert any(guess["text"] in t for t in work), (user, work)
        # The response reveals no stage timing (retrieval time was the probe); only whole milliseconds.
        assert "retrieval_ms" not in r.json()["timings"] and "prompt_ms" not in r.json()["timings"]
    print("right guess vs wrong guess: (texts encoded, wall ms)", measured)
    assert measured["alice"][0] == measured["carol"][0]  # the same work whether the guess was right or not


def test_deleted_entry_leaves_no_embedding_behind(dense_server):
    client, app, encoder = dense_server
    bob = provision(client, "bob")
    client.post("/v1/users/bob/entries", headers=bob, json={"task": TASK, "entries": [
        entry("b1", "Mayor quits", SECRET), entry("b2", "Rain", "rain all week")]})
    assert client.post("/v1/users/bob/generate", headers=bob,
                       json={"task": TASK, "input": "harbor", "k": 1}).status_code == 200
    assert client.delete("/v1/users/bob/entries/b1", headers=bob).status_code == 200
    # Nothing derived from the deleted text is kept: adding it again (as anyone) embeds it again.
    client.post("/v1/users/bob/entries", headers=bob,
                json={"task": TASK, "entries": [entry("b3", "Mayor quits", SECRET)]})
    r, work, _ = _work_of(client, encoder, "/v1/users/bob/generate", bob, {"task": TASK, "input": "harbor", "k": 1})
    assert r.status_code == 200 and any(SECRET in t for t in work), work
    assert not any("rain all week" in t for t in work)  # the entry bob kept was not embedded twice


def test_dense_cache_is_a_bounded_lru():
    from prlm.data.tasks import get_task
    from prlm.retrieval import DenseRetriever

    retriever = DenseRetriever(get_task(TASK), model=CountingEncoder(), max_cached=3)
    retriever.embed(["a", "b", "c"])
    retriever.embed(["a"])  # 'a' becomes the most recently used
    retriever.embed(["d", "e"])
    assert retriever.cached_texts == ["a", "d", "e"]
    retriever.forget(keep={"d"})
    assert retriever.cached_texts == ["d"]
    unbounded = DenseRetriever(get_task(TASK), model=CountingEncoder())  # evaluation's default: no bound
    unbounded.embed([str(i) for i in range(50)])
    assert len(unbounded.cached_texts) == 50


def test_profile_indexes_are_bounded_by_bytes():
    """Issue 26: the bound was a count of entries, whatever their size (2,000 entries of 8 KB took 128 MB;
    the default 100,000 about 6 GB). Now it is the memory the indexes take, estimated."""
    from prlm.serving.engine import ProfileIndex

    class Store:
        def version(self, user_id):
            return 1

        def snapshot(self, user_id, task):
            size = 8000 if user_id == "big" else 10
            return 1, [{"id": f"{user_id}{i}", "text": "x" * size} for i in range(10)]

    index = ProfileIndex(Store(), capacity=100, max_bytes=500_000)
    for user in ("u1", "u2", "big", "u3"):
        index.get(user, TASK)
    # Ten 8 KB entries take about 720 KB with what is derived from them: over the bound on their own, so
    # everything older than the newest index goes; small profiles fit many to the bound.
    assert [u for u in ("u1", "u2", "big", "u3") if index.cached(u, TASK) is not None] == ["u3"]
    for user in [f"s{i}" for i in range(50)]:
        index.get(user, TASK)
    assert all(index.cached(f"s{i}", TASK) is not None for i in range(50))


# --- 2. metrics bounded whatever clients send -------------------------------------------------------

def test_made_up_methods_and_paths_do_not_grow_metrics(server):
    client, _ = server
    client.request("BREW", "/healthz")
    client.get("/no/such/path")
    client.get("/metrics")  # its own series appears after the first scrape
    before = len(client.get("/metrics").text)
    for i in range(300):  # made-up methods (h11 takes any token) and paths
        assert client.request(f"M{i}X", "/healthz").status_code in (404, 405)
        assert client.get(f"/p{i}/{i}").status_code == 404
    text = client.get("/metrics").text
    assert "M17X" not in text and "/p17" not in text
    assert 'method="other"' in text and 'route="unmatched"' in text
    print("metrics bytes before and after 600 made-up requests:", before, len(text))
    assert len(text) - before < 300  # only counter values changed; no new series


# --- 3. a client that leaves mid-upload ------------------------------------------------------------

def _raw(port: int, data: bytes, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, flags=re.M)
    return float(m.group(1)) if m else 0.0


def test_disconnect_mid_upload_is_a_disconnect_not_a_5xx(tmp_path, tiny_generator, caplog):
    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator)
    caplog.set_level(logging.INFO, logger="prlm.serve")
    with ThreadedServer(app) as server:
        head = (b"POST /v1/users/alice/entries HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n")
        sock = _raw(server.port, head + b'{"task": "synthetic", "entries": [')
        time.sleep(0.2)
        sock.close()  # gone with 900 bytes unsent
        name = 'prlm_request_disconnects_total{method="POST",route="/v1/users/{user_id}/entries"}'
        import urllib.request

        def metrics():
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
                return r.read().decode()

        _wait_for(lambda: _metric(metrics(), name) == 1.0, timeout=5)
        text = metrics()
    store.close()
    assert _metric(text, "prlm_request_errors_total") == 0.0, text
    assert _metric(text, name) == 1.0
    lines = [r for r in caplog.records if r.name == "prlm.serve" and "left" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None and lines[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 4. readiness is cheap ------------------------------------------------------------------------

def test_readyz_checks_the_database_at_most_every_few_seconds(tmp_path, tiny_generator, monkeypatch):
    import types

    from prlm.serving import state as state_module

    # The readiness cache's own clock, moved by hand: a loaded machine that takes seconds for 50 requests
    # must not make the test see refreshes that the interval would not give on a quiet one.
    now = [1000.0]
    monkeypatch.setattr(state_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator, ready_check_interval_s=0.5)
    calls = []
    real_check = store.check
    store.check = lambda: calls.append(1) or real_check()
    with TestClient(app) as client:
        for _ in range(50):  # anonymous polling, all within the interval
            assert client.get("/readyz").status_code == 200
        assert len(calls) == 1, len(calls)  # the start-up check only
        now[0] += 0.6
        assert client.get("/readyz").json()["db"] == "ok"
        assert len(calls) == 2  # checked again once the interval passed
        assert client.get("/readyz").status_code == 200
        assert len(calls) == 2
    store.close()


# --- 8. generation for clients that left, and a queue per user -------------------------------------

def test_left_clients_are_dropped_and_one_user_cannot_fill_the_queue(tmp_path, tiny_generator):
    import json
    import urllib.request

    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator, max_queue_per_user=2, batch_window_ms=1.0,
                          max_batch=1)
    state = app.state.prlm
    real_run, gate, first_batch, seen = state.engine.run_batch, threading.Event(), threading.Event(), []

    def gated(batch):
        seen.extend(p.text for p in batch)
        first_batch.set()
        assert gate.wait(30)
        return real_run(batch)

    state.engine.run_batch = gated
    with ThreadedServer(app) as server:
        admin_post = lambda path, body, token: urllib.request.Request(  # noqa: E731
            f"{server.url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})

        def call(req):
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status
            except urllib.error.HTTPError as err:
                return err.code

        tokens = {}
        for user in ("alice", "bob", "carol"):
            with urllib.request.urlopen(admin_post("/v1/users", {"user_id": user}, ADMIN), timeout=10) as r:
                tokens[user] = json.loads(r.read())["token"]
        gen = lambda user, text: admin_post(f"/v1/users/{user}/generate", {"task": TASK, "input": text}, tokens[user])  # noqa: E731
        statuses = {}
        first = threading.Thread(target=lambda: statuses.setdefault("a1", call(gen("alice", "alice one"))))
        first.start()
        assert first_batch.wait(30)  # alice's first request is generating (held at the gate)

        # Bob sends three requests and leaves without reading the answers.
        for i in range(3):
            body = json.dumps({"task": TASK, "input": f"bob left {i}"}).encode()
            sock = _raw(server.port, (f"POST /v1/users/bob/generate HTTP/1.1\r\nHost: x\r\n"
                                      f"Authorization: Bearer {tokens['bob']}\r\nContent-Type: application/json\r\n"
                                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
            time.sleep(0.1)
            sock.close()
        left = state.metrics.disconnects.labels("POST", "/v1/users/{user_id}/generate")
        ok = _wait_for(lambda: state.batcher.waiting_for("bob") == 0 and left._value.get() == 3, timeout=10)
        assert ok, (state.batcher.waiting_for("bob"), left._value.get())

        # Alice may have two requests waiting (the held one counts); a third is refused, carol is not.
        second = threading.Thread(target=lambda: statuses.setdefault("a2", call(gen("alice", "alice two"))))
        second.start()
        assert _wait_for(lambda: state.batcher.waiting_for("alice") == 2, timeout=10)
        assert call(gen("alice", "alice three")) == 429
        third = threading.Thread(target=lambda: statuses.setdefault("c1", call(gen("carol", "carol one"))))
        third.start()
        assert _wait_for(lambda: state.batcher.waiting_for("carol") == 1, timeout=10)
        gate.set()
        for t in (first, second, third):
            t.join(timeout=60)
    store.close()
    assert statuses == {"a1": 200, "a2": 200, "c1": 200}
    assert not [t for t in seen if t.startswith("bob")], seen  # nothing was generated for bob, who left
    assert sorted(seen) == ["alice one", "alice two", "carol one"]
    assert state.batcher.waiting == 0


# --- 9. hardening -----------------------------------------------------------------------------------

def test_security_headers_on_every_answer_and_no_store_on_tokens(server):
    client, _ = server
    answers = {
        "page": client.get("/"), "tasks": client.get("/v1/tasks"), "health": client.get("/healthz"),
        "401": client.get("/v1/me"), "404": client.get("/nope"), "metrics": client.get("/metrics"),
        "413": client.post("/v1/users", content=b"x" * 70000, headers=bearer(ADMIN)),
        "token": client.post("/v1/users", json={"user_id": "alice"}, headers=bearer(ADMIN)),
    }
    assert answers["token"].status_code == 201 and answers["413"].status_code == 413
    for what, r in answers.items():
        h = r.headers
        assert h["x-content-type-options"] == "nosniff", what
        assert h["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in h["content-security-policy"], what
        assert h["cache-control"] == "no-store", what
    page_csp = answers["page"].headers["content-security-policy"]
    assert "'unsafe-inline'" not in page_csp and "script-src 'sha256-" in page_csp and "connect-src 'self'" in page_csp
    assert answers["tasks"].headers["content-security-policy"].startswith("default-src 'none'")


def test_two_authorization_headers_are_refused(server):
    client, _ = server
    alice, bob = provision(client, "alice"), provision(client, "bob")
    r = client.get("/v1/me", headers=[("Authorization", alice["Authorization"]),
                                      ("Authorization", bob["Authorization"])])
    assert r.status_code == 400 and "one Authorization header" in r.json()["detail"]


def test_user_ids_are_case_insensitive(server):
    client, _ = server
    alice = provision(client, "alice")
    r = client.post("/v1/users", json={"user_id": "ALICE"}, headers=bearer(ADMIN))
    assert r.status_code == 409
    r = client.get("/v1/users/Alice/entries", headers=alice)
    assert r.status_code == 200 and r.json()["user_id"] == "alice"
    eve = client.post("/v1/users", json={"user_id": "Eve"}, headers=bearer(ADMIN))
    assert eve.status_code == 201 and eve.json()["user_id"] == "eve"


@pytest.mark.parametrize("bad", ["2024-W01-1", "2024-001", "20240101", "2024-1-01", "2024-01-01T00"])
def test_dates_are_strictly_yyyy_mm_dd(server, bad):
    client, _ = server
    alice = provision(client, "alice")
    r = client.post("/v1/users/alice/entries", headers=alice,
                    json={"task": TASK, "entries": [entry("e", "t", "x", date=bad)]})
    assert r.status_code == 422 and "YYYY-MM-DD" in r.json()["detail"], (bad, r.text)


def test_database_files_are_private(tmp_path):
    from prlm.serving.store import SQLiteProfileStore

    old = os.umask(0o022)
    try:
        store = SQLiteProfileStore(tmp_path / "p.sqlite")
        store.create_user("alice", "h")
    finally:
        os.umask(old)
    for name in ("p.sqlite", "p.sqlite-journal"):  # the rollback journal stays, emptied, between writes
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    store.close()


def test_a_trickled_body_times_out(tmp_path, tiny_generator):
    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator, body_timeout_s=1.0)
    with ThreadedServer(app) as server:
        sock = _raw(server.port, b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 200\r\n\r\n{")
        sock.settimeout(0.25)
        started, reply = time.monotonic(), b""
        while time.monotonic() - started < 5 and b"\r\n\r\n" not in reply:  # one byte every 0.25 s
            try:
                reply += sock.recv(4096)
            except TimeoutError:
                sock.sendall(b" ")
        sock.close()
    store.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert time.monotonic() - started < 5
