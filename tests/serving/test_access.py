"""Access rules and limits: 401/403 as documented, no other user's profile text in any response,
and every client mistake a 4xx (never a 5xx)."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient
from support import ADMIN, TASK, bearer, entry, make_app, provision

SECRET_B = "zqxvbobsecretkumquat"  # text only bob's profile holds


@pytest.fixture
def two_users(tmp_path, tiny_generator):
    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator, max_body_bytes=4096, max_entry_chars=200,
                          max_entries_per_user=5, max_entries_per_request=3, max_input_chars=300, max_k=8)
    with TestClient(app) as client:
        alice, bob = provision(client, "alice"), provision(client, "bob")
        r = client.post("/v1/users/bob/entries", headers=bob, json={"task": TASK, "entries": [
            entry("b1", f"{SECRET_B} headline", f"{SECRET_B} story about the harbor storm")]})
        assert r.status_code == 201
        r = client.post("/v1/users/alice/entries", headers=alice, json={"task": TASK, "entries": [
            entry("a1", "Storm hits harbor", "A storm hit the harbor.")]})
        assert r.status_code == 201
        yield client, alice, bob
    store.close()


def _requests_on(user: str):
    return [("GET", f"/v1/users/{user}/entries", None),
            ("GET", f"/v1/users/{user}/entries?task={TASK}", None),
            ("POST", f"/v1/users/{user}/entries", {"task": TASK, "entries": [entry("x1", "t", "x")]}),
            ("DELETE", f"/v1/users/{user}/entries/b1", None),
            ("POST", f"/v1/users/{user}/generate", {"task": TASK, "input": "harbor storm"})]


def test_another_users_id_is_403_and_never_leaks(two_users):
    client, alice, bob = two_users
    bodies = []
    for user in ("bob", "nobody"):  # an existing and a missing user answer alike: no enumeration
        for method, path, body in _requests_on(user):
            r = client.request(method, path, headers=alice, json=body)
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            bodies.append(r.text)
    # Alice's own requests, generation included, never bring back bob's entries.
    for method, path, body in _requests_on("alice"):
        r = client.request(method, path, headers=alice, json=body)
        assert r.status_code < 500
        bodies.append(r.text)
    r = client.post("/v1/users/alice/generate", headers=alice,
                    json={"task": TASK, "input": f"{SECRET_B} harbor", "k": 8})
    assert r.status_code == 200 and {h["id"] for h in r.json()["retrieved"]} <= {"a1", "x1"}
    assert SECRET_B not in r.json()["reasoning"] + r.json()["answer"] + json.dumps(r.json()["retrieved"])
    bodies.append(client.get("/metrics").text)
    assert not any(SECRET_B in b for b in bodies)
    # Bob's entry is still there: the 403 DELETE did nothing.
    listing = client.get("/v1/users/bob/entries", headers=bob).json()
    assert [e["id"] for e in listing["entries"]] == ["b1"] and SECRET_B in listing["entries"][0]["title"]


def test_admin_token_does_not_reach_profiles(two_users):
    client, _, _ = two_users
    for method, path, body in _requests_on("bob"):
        r = client.request(method, path, headers=bearer(ADMIN), json=body)
        assert r.status_code == 403 and SECRET_B not in r.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic YWxpY2U6eA=="},
                                     {"Authorization": "Bearer not-a-token"},
                                     {"Authorization": "bearer prlm_u_forged"}])
def test_missing_or_unknown_token_is_401(two_users, headers):
    client, _, _ = two_users
    for method, path, body in _requests_on("bob") + [("POST", "/v1/users", {"user_id": "eve"}),
                                                     ("GET", "/v1/me", None)]:
        r = client.request(method, path, headers=headers, json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert SECRET_B not in r.text


def test_unauthenticated_malformed_body_is_401_not_parsed(two_users):
    client, _, _ = two_users
    r = client.post("/v1/users/bob/entries", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 401


def _post(client, path, headers, raw: bytes):
    return client.post(path, content=raw, headers={**headers, "Content-Type": "application/json"})


def test_limits_are_clear_4xx(two_users):
    client, alice, _ = two_users
    add, gen = "/v1/users/alice/entries", "/v1/users/alice/generate"
    cases = [
        # (what, method path, body, expected status, words in detail)
        ("malformed JSON", add, b'{"task": "synthetic", "entries": [', 400, "malformed JSON"),
        ("JSON of the wrong shape", add, b'[1, 2, 3]', 422, ""),
        ("body over the limit", add, json.dumps({"task": TASK, "entries": [entry("big", "t", "x" * 5000)]}).encode(),
         413, "4096"),
        ("entry field too long", add, json.dumps({"task": TASK, "entries": [entry("e", "t", "x" * 201)]}).encode(),
         422, "200"),
        ("too many entries in one request", add,
         json.dumps({"task": TASK, "entries": [entry(f"e{i}", "t", "x") for i in range(4)]}).encode(),
         422, "at most 3"),
        ("unknown task", add, json.dumps({"task": "LaMP-99", "entries": [entry("e", "t", "x")]}).encode(),
         422, "unknown task"),
        ("unknown entry field", add,
         json.dumps({"task": TASK, "entries": [{**entry("e", "t", "x"), "mood": "sad"}]}).encode(),
         422, "unknown field(s) mood"),
        ("missing entry field", add,
         json.dumps({"task": TASK, "entries": [{"id": "e", "text": "x", "date": "2024-01-01"}]}).encode(),
         422, "missing field(s) title"),
        ("non-string field", add,
         json.dumps({"task": TASK, "entries": [{**entry("e", "t", "x"), "title": 5}]}).encode(),
         422, "must be a string"),
        ("bad date", add, json.dumps({"task": TASK, "entries": [entry("e", "t", "x", date="2024-13-45")]}).encode(),
         422, "YYYY-MM-DD"),
        ("bad entry id", add, json.dumps({"task": TASK, "entries": [entry("../x", "t", "x")]}).encode(), 422, "id"),
        ("no entries", add, json.dumps({"task": TASK, "entries": []}).encode(), 422, ""),
        ("unknown top-level field", add,
         json.dumps({"task": TASK, "entries": [entry("e", "t", "x")], "admin": True}).encode(), 422, "admin"),
        ("input too long", gen, json.dumps({"task": TASK, "input": "x" * 301}).encode(), 422, "300"),
        ("empty input", gen, json.dumps({"task": TASK, "input": ""}).encode(), 422, "input"),
        ("k over the limit", gen, json.dumps({"task": TASK, "input": "x", "k": 9}).encode(), 422, "0..8"),
        ("negative k", gen, json.dumps({"task": TASK, "input": "x", "k": -1}).encode(), 422, "0..8"),
        ("k not a number", gen, json.dumps({"task": TASK, "input": "x", "k": "many"}).encode(), 422, "k"),
        ("unknown retriever", gen, json.dumps({"task": TASK, "input": "x", "retriever": "magic"}).encode(),
         422, "magic"),
        ("unknown task in generate", gen, json.dumps({"task": "nope", "input": "x"}).encode(), 422, "unknown task"),
        ("unknown field in generate", gen, json.dumps({"task": TASK, "input": "x", "temperature": 2}).encode(),
         422, "temperature"),
    ]
    for what, path, raw, status, words in cases:
        r = _post(client, path, alice, raw)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert words in r.json()["detail"], (what, r.json())
    # Entries per user: alice has 1 of 5; 3 more fit, then the next is refused.
    three = json.dumps({"task": TASK, "entries": [entry(f"f{i}", "t", "x") for i in range(3)]}).encode()
    assert _post(client, add, alice, three).status_code == 201
    r = _post(client, add, alice,
              json.dumps({"task": TASK, "entries": [entry("g1", "t", "x"), entry("g2", "t", "x")]}).encode())
    assert r.status_code == 409 and "at most 5" in r.json()["detail"]
    assert len(client.get("/v1/users/alice/entries", headers=alice).json()["entries"]) == 4  # nothing half-written


def test_odd_text_is_4xx_or_kept_exactly(two_users):
    client, alice, _ = two_users
    add = "/v1/users/alice/entries"
    surrogate = (b'{"task": "synthetic", "entries": '
                 b'[{"id": "s", "title": "\\ud800", "text": "t", "date": "2024-01-01"}]}')
    assert _post(client, add, alice, surrogate).status_code == 422
    surrogate_task = (b'{"task": "synthetic\\ud800", "entries": '
                      b'[{"id": "s", "title": "x", "text": "t", "date": "2024-01-01"}]}')
    r = _post(client, add, alice, surrogate_task)
    assert r.status_code == 422 and "unknown task" in r.json()["detail"]
    surrogate_input = b'{"task": "synthetic", "input": "\\udfff"}'
    assert _post(client, "/v1/users/alice/generate", alice, surrogate_input).status_code == 422
    deep = b'{"task": "synthetic", "entries": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    assert _post(client, add, alice, deep).status_code in (400, 422)
    odd = {"task": TASK, "entries": [entry("u1", "caf\u00e9 \U0001F600 a\u0000b", "line\nbreak")]}
    assert client.post(add, headers=alice, json=odd).status_code == 201
    kept = client.get(f"{add}?task={TASK}", headers=alice).json()["entries"]
    assert [e for e in kept if e["id"] == "u1"][0]["title"] == "caf\u00e9 \U0001F600 a\u0000b"


def test_oversized_chunked_body_is_413(two_users):
    client, alice, _ = two_users

    def chunks():
        yield b'{"task": "synthetic", "entries": [{"id": "c", "title": "t", "date": "2024-01-01", "text": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    r = client.post("/v1/users/alice/entries", content=chunks(), headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_bad_path_values_are_4xx(two_users):
    client, alice, _ = two_users
    assert client.get("/v1/users/al%20ice/entries", headers=alice).status_code in (403, 422)
    assert client.delete("/v1/users/alice/entries/%2e%2e", headers=alice).status_code == 422
    assert client.get("/v1/users/alice/entries?task=nope", headers=alice).status_code == 422
    assert client.post("/v1/users", json={"user_id": "bad id!"}, headers=bearer(ADMIN)).status_code == 422
    assert client.post("/v1/users", json={"user_id": "x" * 65}, headers=bearer(ADMIN)).status_code == 422
    assert client.get("/v1/nothing", headers=alice).status_code == 404
    assert client.put("/v1/users/alice/entries", headers=alice).status_code == 405


def test_garbage_bodies_never_give_5xx(two_users):
    client, alice, _ = two_users
    rng = random.Random(0)
    pieces = [b"{", b"}", b"[", b"]", b'"task"', b'"entries"', b":", b",", b"null", b"1e999", b'"\\ud800"',
              b"\xff\xfe",
              b'{"task": "synthetic", "entries": '
              b'[{"id": "q", "title": "\\udbff", "text": "t", "date": "2024-01-01"}]}',
              b'"synthetic"', b'{"id": "z"}', b"true", b"-0", b'"input"', b'"k"']
    statuses = set()
    for _ in range(150):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for path in ("/v1/users/alice/entries", "/v1/users/alice/generate", "/v1/users"):
            headers = bearer(ADMIN) if path == "/v1/users" else alice
            r = _post(client, path, headers, raw)
            statuses.add(r.status_code)
            assert r.status_code < 500, (path, raw, r.status_code, r.text)
    metrics = client.get("/metrics").text
    assert "prlm_request_errors_total 0" in metrics
    assert statuses <= {400, 403, 409, 422, 201}
