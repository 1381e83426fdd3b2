"""Per-user profile storage: the `ProfileStore` interface and its SQLite implementation.

The server only talks to `ProfileStore`, so a server database (PostgreSQL...)
can replace SQLite by implementing the same methods. Every write method returns
only after its transaction is committed: the API acknowledges a write only
once it is durable.

Each user has a `version` bumped in the same transaction as any change to their
entries; retrieval indexes are keyed by it, so a changed profile is never
served from a stale index.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prlm import PrlmError


class StoreError(Exception):
    """A request the store refuses (maps to a 4xx), or cannot serve now (503); `status` says which."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class StoreUnavailable(StoreError):
    """The database cannot do this now (read-only, full, corrupt, unreachable): 503 with the cause."""

    def __init__(self, message: str):
        super().__init__(503, message)


class ProfileStore(ABC):
    """Users, their token hashes, and their profile entries (per task)."""

    write_problem: str | None = None
    """Why the last write failed when the database could not take it (read-only, full), until one succeeds."""
    unreachable: str | None = None
    """Why the last connection to the database failed (a server store), until one succeeds."""

    @abstractmethod
    def create_user(self, user_id: str, token_hash: str) -> None:
        """Add a user; StoreError(409) when the id is taken."""

    @abstractmethod
    def set_token_hash(self, user_id: str, token_hash: str) -> None:
        """Replace a user's token (the old one stops working); StoreError(404) for an unknown user."""

    @abstractmethod
    def user_for_token_hash(self, token_hash: str, issued_after: str | None = None) -> str | None:
        """The user holding this token; with `issued_after` (ISO time) only if the token was issued since."""

    @abstractmethod
    def delete_user(self, user_id: str) -> int:
        """Erase the user, their token and every entry in one transaction; returns the entries erased;
        StoreError(404) for an unknown user."""

    @abstractmethod
    def user_exists(self, user_id: str) -> bool: ...

    @abstractmethod
    def add_entries(self, user_id: str, task: str, entries: list[dict], max_entries: int) -> tuple[list[str], int]:
        """Add entries atomically (all or none); returns (ids, new version).

        Entries without an `id` get a fresh one; StoreError(409) when an id is
        taken or the user would hold more than `max_entries`.
        """

    @abstractmethod
    def delete_entry(self, user_id: str, entry_id: str) -> int:
        """Delete one entry; returns the new version; StoreError(404) when absent."""

    @abstractmethod
    def list_entries(self, user_id: str, task: str | None = None) -> list[dict]:
        """Entries in insertion order: {id, task, created, fields...}."""

    @abstractmethod
    def snapshot(self, user_id: str, task: str) -> tuple[int, list[dict]]:
        """(version, entries of `task`) read in one transaction."""

    @abstractmethod
    def version(self, user_id: str) -> int: ...

    @abstractmethod
    def check(self) -> str:
        """'ok' when the database answers and is intact, else what is wrong; never raises."""

    @abstractmethod
    def check_writable(self) -> str:
        """'ok' when a write commits (the start-up check tries one), else what is wrong; never raises."""

    def startup_check(self) -> None:
        """Refuse to serve from a database that is corrupt or cannot take writes: PrlmError with the cause."""
        for what, result in (("integrity check", self.check()), ("test write", self.check_writable())):
            if result != "ok":
                raise PrlmError(f"database {self.describe()} failed its {what}: {result}")

    def describe(self) -> str:
        return type(self).__name__

    @abstractmethod
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    entry_id TEXT NOT NULL,
    task TEXT NOT NULL,
    fields TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (user_id, entry_id)
);
CREATE INDEX IF NOT EXISTS entries_user_task ON entries (user_id, task, seq);
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
"""
# Added after the first release: when the user's current token was issued (NULL: at `created`).
_MIGRATIONS = (("users", "token_issued", "ALTER TABLE users ADD COLUMN token_issued TEXT"),)

# No WAL: see SQLiteProfileStore.
JOURNAL_MODE = "TRUNCATE"

# SQLite errors that say the database cannot serve now, whoever asks: 503 with the cause, not a 500.
_UNAVAILABLE = ("readonly", "read-only", "disk is full", "disk i/o", "malformed", "not a database",
                "unable to open", "locked", "no such table")


@contextmanager
def _unavailable_as_503(path: str):
    try:
        yield
    except (sqlite3.OperationalError, sqlite3.DatabaseError) as err:
        if isinstance(err, sqlite3.IntegrityError) or not any(w in str(err).lower() for w in _UNAVAILABLE):
            raise
        raise StoreUnavailable(f"database unavailable: {err}") from None


def _create_private(path: Path) -> None:
    """Create a new database file readable by its owner only (SQLite gives its -wal and -shm files
    the same mode): profiles and token hashes are nobody else's business."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def short_problem(rows: list[str], limit: int = 200) -> str:
    """An integrity check's findings as one short line: the first, whitespace folded, and how many more
    (SQLite's first row alone can run to many lines)."""
    lines = [" ".join(part.split()) for row in rows for part in row.splitlines()
             if part.strip() and not part.startswith("***")]  # '*** in database main ***' is a heading
    if not lines:
        return "integrity check found a problem"
    first = lines[0] if len(lines[0]) <= limit else lines[0][:limit - 3] + "..."
    more = f" (and {len(lines) - 1} more; PRAGMA integrity_check lists them)" if len(lines) > 1 else ""
    return first + more


class SQLiteProfileStore(ProfileStore):
    """SQLite with a rollback journal (TRUNCATE) and synchronous=FULL: a committed write survives a crash
    and a power loss (in TRUNCATE mode FULL syncs the emptied journal, the commit point).

    Not WAL: WAL's index lives in a `-shm` file that every connection maps into memory, and a `-shm`
    that stops being writable (a full or failing file system, a truncated file) kills the process with
    SIGBUS, with no log line and no answer. A rollback journal needs no shared memory: every such fault is
    an I/O error, answered 503. The price: writers and readers take turns (about two thirds of WAL's write
    throughput with 8 concurrent writers; docs/serving.md has the figures).

    One connection per thread (sqlite3 connections must not be shared across
    threads); writes take the write lock up front (BEGIN IMMEDIATE) so that two
    writers never deadlock upgrading a read lock.
    """

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000, pragmas: tuple[str, ...] = ()):
        """`pragmas`: extra `PRAGMA` statements run on every connection (e.g. 'query_only=ON')."""
        self.path = str(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.pragmas = tuple(pragmas)
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise PrlmError(f"database folder '{parent}' does not exist; create it or pass another --db")
            _create_private(Path(self.path))
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            conn = self._conn()
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != JOURNAL_MODE.lower() and self.path != ":memory:":
                raise PrlmError(f"database '{self.path}' could not switch to journal mode {JOURNAL_MODE} (got "
                                f"'{mode}'): is another process using it?")
            conn.executescript(_SCHEMA)
            for table, column, sql in _MIGRATIONS:
                if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(sql)
        except sqlite3.Error as err:  # e.g. a file that is not SQLite: one line, not a traceback
            self.close()
            raise PrlmError(f"database '{self.path}' cannot be used: {err} "
                            f"(restore it from a backup, or move it away to start a new one)") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # isolation_level=None: transactions are explicit (BEGIN ... COMMIT).
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000,
                                       check_same_thread=False)  # close() runs on another thread
            except sqlite3.Error as err:
                raise PrlmError(f"cannot open database '{self.path}': {err}") from None
            # Per connection: only WAL is remembered by the file (an old WAL database is switched here).
            conn.execute(f"PRAGMA journal_mode={JOURNAL_MODE}")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # An erased user's text is overwritten, not left in free pages (Debian's SQLite does so by default;
            # other builds do not).
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            for pragma in self.pragmas:
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _write(self, fn):
        try:
            with _unavailable_as_503(self.path):
                conn = self._conn()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except StoreUnavailable as err:
            self.write_problem = str(err)
            raise
        self.write_problem = None
        return result

    def _read(self, fn):
        with _unavailable_as_503(self.path):
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _query(self, sql: str, args=()):
        with _unavailable_as_503(self.path):
            return self._conn().execute(sql, args).fetchone()

    def create_user(self, user_id: str, token_hash: str) -> None:
        def op(conn):
            # Case-insensitive: a database from before ids were lower-cased may hold 'Alice'.
            if conn.execute("SELECT 1 FROM users WHERE lower(user_id)=lower(?)", (user_id,)).fetchone():
                raise StoreError(409, f"user '{user_id}' already exists; issue a new token with POST "
                                      f"/v1/users/{user_id}/token")
            now = _now()
            conn.execute("INSERT INTO users (user_id, token_hash, created, token_issued) VALUES (?, ?, ?, ?)",
                         (user_id, token_hash, now, now))

        self._write(op)

    def set_token_hash(self, user_id: str, token_hash: str) -> None:
        def op(conn):
            cur = conn.execute("UPDATE users SET token_hash=?, token_issued=? WHERE user_id=?",
                               (token_hash, _now(), user_id))
            if cur.rowcount == 0:
                raise StoreError(404, f"no user '{user_id}'")

        self._write(op)

    def user_for_token_hash(self, token_hash: str, issued_after: str | None = None) -> str | None:
        row = self._query("SELECT user_id FROM users WHERE token_hash=? AND COALESCE(token_issued, created) >= ?",
                          (token_hash, issued_after or ""))
        return row[0] if row else None

    def delete_user(self, user_id: str) -> int:
        def op(conn):
            erased = conn.execute("DELETE FROM entries WHERE user_id=?", (user_id,)).rowcount
            if conn.execute("DELETE FROM users WHERE user_id=?", (user_id,)).rowcount == 0:
                raise StoreError(404, f"no user '{user_id}'")
            return erased

        return self._write(op)

    def user_exists(self, user_id: str) -> bool:
        return self._query("SELECT 1 FROM users WHERE user_id=?", (user_id,)) is not None

    def add_entries(self, user_id: str, task: str, entries: list[dict], max_entries: int) -> tuple[list[str], int]:
        def op(conn):
            count = conn.execute("SELECT COUNT(*) FROM entries WHERE user_id=?", (user_id,)).fetchone()[0]
            if count + len(entries) > max_entries:
                raise StoreError(409, f"a profile holds at most {max_entries} entries; this user has {count} "
                                      f"and the request adds {len(entries)}: delete some first")
            ids, now = [], _now()
            for entry in entries:
                fields = {k: v for k, v in entry.items() if k != "id"}
                entry_id = entry.get("id") or "e" + secrets.token_hex(6)
                try:
                    conn.execute("INSERT INTO entries (user_id, entry_id, task, fields, created) VALUES (?, ?, ?, ?, "
                                 "?)",
                                 (user_id, entry_id, task, json.dumps(fields, ensure_ascii=False), now))
                except sqlite3.IntegrityError:
                    raise StoreError(409, f"entry id '{entry_id}' already exists in this profile") from None
                ids.append(entry_id)
            conn.execute("UPDATE users SET version=version+1 WHERE user_id=?", (user_id,))
            return ids, conn.execute("SELECT version FROM users WHERE user_id=?", (user_id,)).fetchone()[0]

        return self._write(op)

    def delete_entry(self, user_id: str, entry_id: str) -> int:
        def op(conn):
            cur = conn.execute("DELETE FROM entries WHERE user_id=? AND entry_id=?", (user_id, entry_id))
            if cur.rowcount == 0:
                raise StoreError(404, f"no entry '{entry_id}' in this profile")
            conn.execute("UPDATE users SET version=version+1 WHERE user_id=?", (user_id,))
            return conn.execute("SELECT version FROM users WHERE user_id=?", (user_id,)).fetchone()[0]

        return self._write(op)

    @staticmethod
    def _rows(conn, user_id: str, task: str | None) -> list[dict]:
        sql, args = "SELECT entry_id, task, fields, created FROM entries WHERE user_id=?", [user_id]
        if task is not None:
            sql, args = sql + " AND task=?", args + [task]
        rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [{"id": eid, "task": t, "created": created, **json.loads(fields)} for eid, t, fields, created in rows]

    def list_entries(self, user_id: str, task: str | None = None) -> list[dict]:
        return self._read(lambda conn: self._rows(conn, user_id, task))

    def snapshot(self, user_id: str, task: str) -> tuple[int, list[dict]]:
        def op(conn):
            row = conn.execute("SELECT version FROM users WHERE user_id=?", (user_id,)).fetchone()
            if row is None:
                raise StoreError(404, f"no user '{user_id}'")
            return row[0], self._rows(conn, user_id, task)

        return self._read(op)

    def version(self, user_id: str) -> int:
        row = self._query("SELECT version FROM users WHERE user_id=?", (user_id,))
        if row is None:
            raise StoreError(404, f"no user '{user_id}'")
        return row[0]

    def check(self) -> str:
        # quick_check: the cheap form of integrity_check (the server runs it at start-up, then every few seconds).
        try:
            rows = self._conn().execute("PRAGMA quick_check").fetchall()
        except (sqlite3.Error, PrlmError) as err:
            return f"{err}"
        return "ok" if rows == [("ok",)] else short_problem([r[0] for r in rows])

    def check_writable(self) -> str:
        try:
            self._write(lambda conn: conn.execute(
                "INSERT INTO write_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at=excluded.at",
                (_now(),)))
        except (StoreError, PrlmError, sqlite3.Error) as err:
            return str(err)
        return "ok"

    def describe(self) -> str:
        return f"'{self.path}'"

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
