"""The SQLite profile store: WAL, atomic writes, versions, limits, durability across reopen."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from prlm import PrlmError
from prlm.serving.store import SQLiteProfileStore, StoreError


def _entries(*ids):
    return [{"id": i, "title": f"T {i}", "text": f"text {i}", "date": "2024-01-01"} for i in ids]


@pytest.fixture
def store(tmp_path):
    s = SQLiteProfileStore(tmp_path / "p.sqlite")
    s.create_user("alice", "hash-a")
    yield s
    s.close()


def test_wal_mode_and_schema(tmp_path, store):
    with sqlite3.connect(tmp_path / "p.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.check() == "ok"


def test_add_list_delete_bump_version(store):
    assert store.version("alice") == 0
    ids, v1 = store.add_entries("alice", "synthetic", _entries("a", "b"), max_entries=10)
    assert ids == ["a", "b"] and v1 == 1
    ids, v2 = store.add_entries("alice", "LaMP-7", [{"text": "a tweet", "date": "2024-01-02"}], max_entries=10)
    assert v2 == 2 and ids[0].startswith("e")  # a generated id
    assert [e["id"] for e in store.list_entries("alice", "synthetic")] == ["a", "b"]
    assert len(store.list_entries("alice")) == 3
    assert store.list_entries("alice", "synthetic")[0]["title"] == "T a"
    assert store.delete_entry("alice", "a") == 3
    with pytest.raises(StoreError) as err:
        store.delete_entry("alice", "a")
    assert err.value.status == 404
    version, entries = store.snapshot("alice", "synthetic")
    assert version == 3 and [e["id"] for e in entries] == ["b"]


def test_add_is_all_or_none(store):
    store.add_entries("alice", "synthetic", _entries("a"), max_entries=10)
    with pytest.raises(StoreError) as err:
        store.add_entries("alice", "synthetic", _entries("b", "a"), max_entries=10)  # 'a' is taken
    assert err.value.status == 409
    assert [e["id"] for e in store.list_entries("alice")] == ["a"]
    assert store.version("alice") == 1  # the failed write changed nothing


def test_entries_per_user_limit(store):
    store.add_entries("alice", "synthetic", _entries("a", "b"), max_entries=3)
    with pytest.raises(StoreError) as err:
        store.add_entries("alice", "synthetic", _entries("c", "d"), max_entries=3)
    assert err.value.status == 409 and "at most 3" in str(err.value)


def test_users_and_tokens(store):
    with pytest.raises(StoreError) as err:
        store.create_user("alice", "other")
    assert err.value.status == 409
    assert store.user_for_token_hash("hash-a") == "alice"
    store.set_token_hash("alice", "hash-b")
    assert store.user_for_token_hash("hash-a") is None and store.user_for_token_hash("hash-b") == "alice"
    with pytest.raises(StoreError):
        store.set_token_hash("nobody", "x")


def test_entries_are_per_user(store):
    store.create_user("bob", "hash-bob")
    store.add_entries("alice", "synthetic", _entries("a"), max_entries=10)
    store.add_entries("bob", "synthetic", _entries("a", "z"), max_entries=10)  # ids are per user
    assert [e["id"] for e in store.list_entries("alice")] == ["a"]
    assert [e["id"] for e in store.list_entries("bob")] == ["a", "z"]


def test_committed_writes_survive_reopen(tmp_path):
    path = tmp_path / "d.sqlite"
    s = SQLiteProfileStore(path)
    s.create_user("u", "h")
    s.add_entries("u", "synthetic", _entries("x", "y"), max_entries=10)
    s.close()
    again = SQLiteProfileStore(path)
    assert [e["id"] for e in again.list_entries("u")] == ["x", "y"] and again.version("u") == 1
    again.close()


def test_concurrent_writers_from_threads(store):
    errors = []

    def write(n):
        try:
            for j in range(10):
                store.add_entries("alice", "synthetic", _entries(f"t{n}-{j}"), max_entries=1000)
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_entries("alice")) == 40 and store.version("alice") == 40


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PrlmError, match="does not exist"):
        SQLiteProfileStore(tmp_path / "nope" / "p.sqlite")
