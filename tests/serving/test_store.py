"""The profile stores, SQLite and PostgreSQL, through one suite: atomic writes, versions, limits,
durability across reopen; then what is particular to each (the journal for SQLite)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from prlm import PrlmError
from prlm.serving.storage import open_store
from prlm.serving.store import SQLiteProfileStore, StoreError


def _entries(*ids):
    return [{"id": i, "title": f"T {i}", "text": f"text {i}", "date": "2024-01-01"} for i in ids]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """What `--db` would say: a SQLite file or the URL of a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "p.sqlite")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(database):
    s = open_store(database)
    s.create_user("alice", "hash-a")
    yield s
    s.close()


def test_the_url_picks_the_store(database):
    s = open_store(database)
    assert type(s).__name__ == ("PostgresProfileStore" if database.startswith("postgresql://")
                                else "SQLiteProfileStore")
    assert s.check() == "ok" and s.check_writable() == "ok"
    s.startup_check()
    s.close()


def test_sqlite_rollback_journal_and_schema(tmp_path):
    store = SQLiteProfileStore(tmp_path / "p.sqlite")
    store.create_user("alice", "h")
    modes = []  # every connection, the one of each thread: no WAL, so no -shm (issue 26)
    threads = [threading.Thread(target=lambda: modes.append(store._conn().execute("PRAGMA journal_mode").fetchone()))
               for _ in range(2)]
    for t in threads:
        t.start()
        t.join()
    assert modes == [("truncate",), ("truncate",)]
    assert store.check() == "ok"
    assert not (tmp_path / "p.sqlite-shm").exists() and not (tmp_path / "p.sqlite-wal").exists()
    store.close()


def test_a_wal_database_is_switched_to_the_rollback_journal(tmp_path):
    conn = sqlite3.connect(tmp_path / "p.sqlite")  # a database made by an earlier version: WAL, no token_issued
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE users (user_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, "
                 "version INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL)")
    conn.execute("INSERT INTO users VALUES ('alice', 'h', 0, '2024-01-01T00:00:00+00:00')")
    conn.commit()
    conn.close()
    store = SQLiteProfileStore(tmp_path / "p.sqlite")
    assert store.user_for_token_hash("h") == "alice"  # the token issued before the column existed still works
    assert store.user_for_token_hash("h", issued_after="2025-01-01T00:00:00+00:00") is None
    store.close()
    conn = sqlite3.connect(tmp_path / "p.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # WAL no more (a rollback journal)
    conn.close()


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
    with pytest.raises(StoreError) as err:  # ids are unique whatever their case
        store.create_user("ALICE", "hash-c")
    assert err.value.status == 409


def test_entries_are_per_user(store):
    store.create_user("bob", "hash-bob")
    store.add_entries("alice", "synthetic", _entries("a"), max_entries=10)
    store.add_entries("bob", "synthetic", _entries("a", "z"), max_entries=10)  # ids are per user
    assert [e["id"] for e in store.list_entries("alice")] == ["a"]
    assert [e["id"] for e in store.list_entries("bob")] == ["a", "z"]


def test_committed_writes_survive_reopen(database):
    s = open_store(database)
    s.create_user("u", "h")
    s.add_entries("u", "synthetic", _entries("x", "y"), max_entries=10)
    s.close()
    again = open_store(database)
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


def test_concurrent_writers_keep_the_limit(store):
    """The entry limit holds under concurrent writers (each write sees the others' counts)."""
    results = []

    def write(n):
        try:
            store.add_entries("alice", "synthetic", _entries(f"c{n}-a", f"c{n}-b"), max_entries=10)
            results.append("ok")
        except StoreError as err:
            results.append(err.status)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 5 and results.count(409) == 3
    assert len(store.list_entries("alice")) == 10 and store.version("alice") == 5


def test_delete_user_leaves_nothing_of_theirs(store, database):
    """Issue 26: erasure on both stores. Nothing with the user's id remains in any table."""
    store.create_user("bob", "hash-b")
    store.add_entries("alice", "synthetic", _entries("a", "b"), max_entries=10)
    store.add_entries("bob", "synthetic", _entries("a"), max_entries=10)
    assert store.delete_user("alice") == 2
    assert not store.user_exists("alice") and store.user_for_token_hash("hash-a") is None
    with pytest.raises(StoreError) as err:
        store.delete_user("alice")
    assert err.value.status == 404
    assert [e["id"] for e in store.list_entries("bob")] == ["a"]  # another user's entries stay
    if database.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(database) as conn:
            counts = [conn.execute(f"SELECT COUNT(*) FROM {t} WHERE user_id='alice'").fetchone()[0]
                      for t in ("users", "entries")]
    else:
        with sqlite3.connect(database) as conn:
            counts = [conn.execute(f"SELECT COUNT(*) FROM {t} WHERE user_id='alice'").fetchone()[0]
                      for t in ("users", "entries")]
        conn.close()
    assert counts == [0, 0]


def test_token_issued_after(store):
    assert store.user_for_token_hash("hash-a", issued_after="2000-01-01T00:00:00+00:00") == "alice"
    assert store.user_for_token_hash("hash-a", issued_after="2999-01-01T00:00:00+00:00") is None
