"""A careless operator's faults (issue 16): a corrupt, read-only or full database, a bad admin token file.
Each fails clearly: one line and exit code 2 at start-up, 503 with the cause at run time, never a traceback."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from support import ADMIN, TASK, bearer, entry, serve_config


class StartedAnyway(Exception):
    """uvicorn.run was reached: the server would have started."""


@pytest.fixture
def serve_main(monkeypatch, capsys):
    """Runs `prlm serve` in-process up to uvicorn.run (which raises StartedAnyway); returns (code, stderr)."""
    import uvicorn

    from prlm.cli import main

    def refuse(*args, **kwargs):
        raise StartedAnyway

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setenv("PRLM_ADMIN_TOKEN", ADMIN)

    def run(*args):
        code = main(["serve", "--model", "none", *args])
        return code, capsys.readouterr().err

    return run


def _one_line_error(err: str, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prlm: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])


def _corrupt_pages(path, seed: int = 0) -> None:
    """Keep the 100-byte header and page 1 (the schema); overwrite every later page with random bytes."""
    import random

    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    rng = random.Random(seed)
    data[page:] = bytes(rng.getrandbits(8) for _ in range(len(data) - page))
    path.write_bytes(bytes(data))


def _filled_db(path, n: int = 200):
    import sqlite3

    from prlm.serving.store import SQLiteProfileStore

    store = SQLiteProfileStore(path)
    store.create_user("alice", "h")
    store.add_entries("alice", TASK, [entry(f"e{i}", "t", "x" * 300) for i in range(n)], max_entries=10_000)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    conn.close()


# --- 5. a corrupt database ----------------------------------------------------------------------------

def test_random_bytes_database_is_one_line_exit_2(tmp_path, serve_main):
    db = tmp_path / "p.sqlite"
    db.write_bytes(os.urandom(8192))
    code, err = serve_main("--db", str(db))
    assert code == 2
    _one_line_error(err, str(db), "not a database")


def test_garbage_pages_fail_the_start_up_check(tmp_path, serve_main):
    db = tmp_path / "p.sqlite"
    _filled_db(db)
    _corrupt_pages(db)
    code, err = serve_main("--db", str(db))
    assert code == 2
    _one_line_error(err, str(db), "integrity check")


def test_a_damaged_tree_page_is_one_short_line(tmp_path, serve_main):
    """Issue 26: SQLite's findings are a heading and a line each; they went out as they came, one message
    of many lines. Now the first, and how many more."""
    db = tmp_path / "p.sqlite"
    _filled_db(db, 400)
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page * 5 + 8:page * 5 + 200] = b"\x55" * 192  # page 6's cell pointers: out of range
    db.write_bytes(bytes(data))
    code, err = serve_main("--db", str(db))
    assert code == 2
    _one_line_error(err, str(db), "integrity check", "On tree page 6", "more; PRAGMA integrity_check")
    assert len(err) < 400, err


def test_corrupt_database_at_run_time_is_503_with_the_cause(tmp_path, tiny_generator):
    from prlm.serving.app import create_app
    from prlm.serving.store import SQLiteProfileStore

    db = tmp_path / "p.sqlite"
    _filled_db(db)
    _corrupt_pages(db)
    store = SQLiteProfileStore(db)  # the header is intact: it opens
    app = create_app(serve_config(db), store, ADMIN, *tiny_generator, model_name="tiny")
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert ("malformed" in r.json()["db"] or "corrupt" in r.json()["db"].lower()
                or "page" in r.json()["db"]), r.json()
        r = client.get("/v1/users/alice/entries", headers=bearer(ADMIN))
        assert r.status_code in (403, 503), r.text  # never a 500
    store.close()


# --- 6. read-only database or full disk ---------------------------------------------------------------

def test_read_only_database_fails_the_start_up_check(tmp_path):
    from prlm import PrlmError
    from prlm.serving.store import SQLiteProfileStore

    SQLiteProfileStore(tmp_path / "p.sqlite").close()
    store = SQLiteProfileStore(tmp_path / "p.sqlite", pragmas=("query_only=ON",))
    with pytest.raises(PrlmError, match="test write.*readonly") as err:
        store.startup_check()
    assert "\n" not in str(err.value)
    store.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only file anyway")
def test_read_only_file_is_refused_at_start_up(tmp_path, serve_main):
    from prlm.serving.store import SQLiteProfileStore

    SQLiteProfileStore(tmp_path / "p.sqlite").close()
    for path in tmp_path.glob("p.sqlite*"):
        path.chmod(0o400)
    tmp_path.chmod(0o500)
    try:
        code, err = serve_main("--db", str(tmp_path / "p.sqlite"))
    finally:
        tmp_path.chmod(0o700)
    assert code == 2
    _one_line_error(err, "read")


def _app_over(tmp_path, generator, tokenizer, pragmas):
    from prlm.serving.app import create_app
    from prlm.serving.store import SQLiteProfileStore

    db = tmp_path / "p.sqlite"
    setup = SQLiteProfileStore(db)
    pages = setup._conn().execute("PRAGMA page_count").fetchone()[0]
    setup.close()
    store = SQLiteProfileStore(db, pragmas=tuple(p.format(pages=pages) for p in pragmas))
    return create_app(serve_config(db), store, ADMIN, generator, tokenizer, model_name="tiny"), store


def test_full_disk_at_run_time_is_503_with_the_cause(tmp_path, tiny_generator):
    app, store = _app_over(tmp_path, *tiny_generator, pragmas=["max_page_count={pages}"])  # no room to grow
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/users", json={"user_id": "alice"}, headers=bearer(ADMIN))
        if r.status_code == 201:  # the first row fitted in a page that was there
            alice = bearer(r.json()["token"])
            r = client.post("/v1/users/alice/entries", headers=alice, json={"task": TASK, "entries": [
                entry(f"e{i}", "t", "x" * 8000) for i in range(5)]})
        assert r.status_code == 503 and "full" in r.json()["detail"], r.text
        assert r.headers["retry-after"] == "5"
        assert 'status="500"' not in client.get("/metrics").text  # a 503 with its cause, never a 500
        # Readiness says why writes fail.
        assert client.get("/readyz").status_code == 503
    store.close()


def test_read_only_at_run_time_is_503_with_the_cause(tmp_path, tiny_generator):
    app, store = _app_over(tmp_path, *tiny_generator, pragmas=["query_only=ON"])
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/users", json={"user_id": "alice"}, headers=bearer(ADMIN))
        assert r.status_code == 503 and "readonly" in r.json()["detail"], r.text
        assert client.get("/v1/tasks").status_code == 200  # reads still work
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "readonly" in " ".join(ready.json()["problems"]), ready.json()
    store.close()


# --- 7. the admin token file --------------------------------------------------------------------------

def _token_file(tmp_path, content: bytes, mode: int = 0o600):
    path = tmp_path / "admin.token"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640, 0o604])
def test_token_file_readable_by_others_is_refused(tmp_path, serve_main, mode):
    path = _token_file(tmp_path, ADMIN.encode(), mode)
    code, err = serve_main("--db", str(tmp_path / "p.sqlite"), "--admin-token-file", str(path))
    assert code == 2
    _one_line_error(err, "chmod 600", f"{mode:04o}")


def test_token_file_not_utf8_or_unreadable_is_one_line(tmp_path, serve_main, monkeypatch):
    path = _token_file(tmp_path, b"\xff\xfe" + os.urandom(30))
    code, err = serve_main("--db", str(tmp_path / "p.sqlite"), "--admin-token-file", str(path))
    assert code == 2
    _one_line_error(err, "not UTF-8")
    path = _token_file(tmp_path, ADMIN.encode())
    from pathlib import Path

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file: the refusal is simulated
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: denied(self))
    code, err = serve_main("--db", str(tmp_path / "p.sqlite"), "--admin-token-file", str(path))
    assert code == 2
    _one_line_error(err, "cannot be read", "Permission denied")


@pytest.mark.parametrize("weak", ["a" * 16, "abababababababab", "1234123412341234", "x" * 40])
def test_low_variety_tokens_are_refused(tmp_path, serve_main, monkeypatch, weak):
    path = _token_file(tmp_path, weak.encode())
    code, err = serve_main("--db", str(tmp_path / "p.sqlite"), "--admin-token-file", str(path))
    assert code == 2
    _one_line_error(err, "distinct characters")
    monkeypatch.setenv("PRLM_ADMIN_TOKEN", weak)
    code, err = serve_main("--db", str(tmp_path / "p.sqlite"))
    assert code == 2
    _one_line_error(err, "distinct characters")


def test_a_good_token_file_starts(tmp_path, serve_main):
    path = _token_file(tmp_path, b"  " + ADMIN.encode() + b"\n")
    with pytest.raises(StartedAnyway):
        serve_main("--db", str(tmp_path / "p.sqlite"), "--admin-token-file", str(path))


@pytest.mark.parametrize("content", [b"\xef\xbb\xbf" + ADMIN.encode() + b"\n",  # a byte-order mark (Notepad)
                                     ADMIN.encode() + b"\nsecond-line\n",  # a second line
                                     ADMIN.encode()[:20] + b" " + ADMIN.encode()[20:]])  # a space
def test_token_file_with_a_bom_or_a_second_line_is_refused(tmp_path, serve_main, content):
    """Issue 26: such a file started the server, and then every admin call was 401 (the token a client
    can send never matched)."""
    code, err = serve_main("--db", str(tmp_path / "p.sqlite"), "--admin-token-file",
                           str(_token_file(tmp_path, content)))
    assert code == 2
    _one_line_error(err, "printable ASCII")


def test_short_problem_folds_sqlites_findings():
    from prlm.serving.store import short_problem

    rows = ["*** in database main ***\nPage 5: btreeInitPage() returns error code 11\nOn tree page 3 cell 0: x",
            "Page 7 is never used"]
    assert short_problem(rows) == ("Page 5: btreeInitPage() returns error code 11 "
                                   "(and 2 more; PRAGMA integrity_check lists them)")
    assert len(short_problem(["x" * 1000])) == 200
