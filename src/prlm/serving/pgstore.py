"""The `ProfileStore` on PostgreSQL (psycopg 3): for more than one API process, on more than one machine.

Same semantics as the SQLite store: adds are all or none, a user's version is
bumped in the same transaction as the change, and every write method returns
only after COMMIT (PostgreSQL's default `synchronous_commit=on` flushes the
WAL first), so an acknowledged write survives a crash of the server or of
PostgreSQL. Writes to one user lock that user's row first (`SELECT ... FOR
UPDATE`), so concurrent writers from any number of processes see each other's
counts and versions; the entry limit and the version sequence hold across
processes.

Selected by a URL: `prlm serve --db postgresql://user@host:5432/dbname`.
One connection per thread, opened on first use and reopened after a lost one.
"""

from __future__ import annotations

import json
import secrets
import threading
from contextlib import contextmanager

from prlm import PrlmError
from prlm.serving.store import ProfileStore, StoreError, StoreUnavailable, _now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    version BIGINT NOT NULL DEFAULT 0,
    created TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_user_id_lower ON users (lower(user_id));
CREATE TABLE IF NOT EXISTS entries (
    seq BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    entry_id TEXT NOT NULL,
    task TEXT NOT NULL,
    fields TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (user_id, entry_id)
);
CREATE INDEX IF NOT EXISTS entries_user_task ON entries (user_id, task, seq);
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
ALTER TABLE users ADD COLUMN IF NOT EXISTS token_issued TEXT;
"""

# Creating the schema from two processes at once races in PostgreSQL's catalog even with IF NOT
# EXISTS; an advisory lock (any constant) serialises it.
_SCHEMA_LOCK = 7_160_016


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise PrlmError("a postgresql:// database needs psycopg 3: pip install 'psycopg[binary]'") from None
    return psycopg


class PostgresProfileStore(ProfileStore):
    def __init__(self, url: str, connect_timeout_s: int = 10):
        self.url, self.connect_timeout_s = url, connect_timeout_s
        self.psycopg = _psycopg()
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        try:
            with self._transaction() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                conn.execute(_SCHEMA)
        except (StoreError, self.psycopg.Error) as err:  # at start-up: one line, exit code 2
            self.close()
            raise PrlmError(f"database {self.describe()} cannot be used: {err}") from None

    def describe(self) -> str:
        info = self.psycopg.conninfo.conninfo_to_dict(self.url)
        return f"postgresql {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        try:
            conn = self.psycopg.connect(self.url, autocommit=False, connect_timeout=self.connect_timeout_s)
        except self.psycopg.Error as err:
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            # Known to /readyz at once, not at the next periodic check.
            self.unreachable = f"database unavailable: cannot connect to {self.describe()}: {cause}"
            raise StoreUnavailable(self.unreachable) from None
        self.unreachable = None
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _transaction(self, read_only: bool = False):
        """One transaction, committed on success (the write is durable when this returns), else rolled back.
        A lost connection or a server that refuses writes becomes StoreUnavailable (503 with the cause)."""
        psycopg = self.psycopg
        conn = self._conn()
        try:
            if read_only:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn
            conn.commit()
        except StoreError:
            _rollback(conn)
            raise
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.DiskFull,
                psycopg.errors.InsufficientResources) as err:
            _rollback(conn)
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if not read_only:
                self.write_problem = f"database unavailable: {message}"
            raise StoreUnavailable(f"database unavailable: {message}") from None
        except BaseException:
            _rollback(conn)
            raise
        self.unreachable = None
        if not read_only:
            self.write_problem = None

    def create_user(self, user_id: str, token_hash: str) -> None:
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM users WHERE lower(user_id)=lower(%s)", (user_id,)).fetchone():
                raise StoreError(409, f"user '{user_id}' already exists; issue a new token with POST "
                                      f"/v1/users/{user_id}/token")
            try:
                with conn.transaction():  # a savepoint: a concurrent create of the same id is a 409, not an error
                    now = _now()
                    conn.execute("INSERT INTO users (user_id, token_hash, created, token_issued) "
                                 "VALUES (%s, %s, %s, %s)", (user_id, token_hash, now, now))
            except self.psycopg.errors.UniqueViolation:
                raise StoreError(409, f"user '{user_id}' already exists") from None

    def set_token_hash(self, user_id: str, token_hash: str) -> None:
        with self._transaction() as conn:
            cur = conn.execute("UPDATE users SET token_hash=%s, token_issued=%s WHERE user_id=%s",
                               (token_hash, _now(), user_id))
            if cur.rowcount == 0:
                raise StoreError(404, f"no user '{user_id}'")

    def user_for_token_hash(self, token_hash: str, issued_after: str | None = None) -> str | None:
        with self._transaction(read_only=True) as conn:
            row = conn.execute("SELECT user_id FROM users WHERE token_hash=%s AND COALESCE(token_issued, created) "
                               ">= %s", (token_hash, issued_after or "")).fetchone()
        return row[0] if row else None

    def delete_user(self, user_id: str) -> int:
        with self._transaction() as conn:
            self._lock_user(conn, user_id)  # a concurrent add to this user waits, then finds no user
            erased = conn.execute("DELETE FROM entries WHERE user_id=%s", (user_id,)).rowcount
            conn.execute("DELETE FROM users WHERE user_id=%s", (user_id,))
        return erased

    def user_exists(self, user_id: str) -> bool:
        with self._transaction(read_only=True) as conn:
            return conn.execute("SELECT 1 FROM users WHERE user_id=%s", (user_id,)).fetchone() is not None

    def _lock_user(self, conn, user_id: str) -> None:
        if conn.execute("SELECT version FROM users WHERE user_id=%s FOR UPDATE", (user_id,)).fetchone() is None:
            raise StoreError(404, f"no user '{user_id}'")

    def add_entries(self, user_id: str, task: str, entries: list[dict], max_entries: int) -> tuple[list[str], int]:
        with self._transaction() as conn:
            self._lock_user(conn, user_id)  # writers to one user queue here, in every process
            count = conn.execute("SELECT COUNT(*) FROM entries WHERE user_id=%s", (user_id,)).fetchone()[0]
            if count + len(entries) > max_entries:
                raise StoreError(409, f"a profile holds at most {max_entries} entries; this user has {count} "
                                      f"and the request adds {len(entries)}: delete some first")
            ids, now = [], _now()
            for entry in entries:
                fields = {k: v for k, v in entry.items() if k != "id"}
                entry_id = entry.get("id") or "e" + secrets.token_hex(6)
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO entries (user_id, entry_id, task, fields, created) "
                                     "VALUES (%s, %s, %s, %s, %s)",
                                     (user_id, entry_id, task, json.dumps(fields, ensure_ascii=False), now))
                except self.psycopg.errors.UniqueViolation:
                    raise StoreError(409, f"entry id '{entry_id}' already exists in this profile") from None
                ids.append(entry_id)
            version = conn.execute("UPDATE users SET version=version+1 WHERE user_id=%s RETURNING version",
                                   (user_id,)).fetchone()[0]
        return ids, version

    def delete_entry(self, user_id: str, entry_id: str) -> int:
        with self._transaction() as conn:
            self._lock_user(conn, user_id)
            cur = conn.execute("DELETE FROM entries WHERE user_id=%s AND entry_id=%s", (user_id, entry_id))
            if cur.rowcount == 0:
                raise StoreError(404, f"no entry '{entry_id}' in this profile")
            version = conn.execute("UPDATE users SET version=version+1 WHERE user_id=%s RETURNING version",
                                   (user_id,)).fetchone()[0]
        return version

    @staticmethod
    def _rows(conn, user_id: str, task: str | None) -> list[dict]:
        sql, args = "SELECT entry_id, task, fields, created FROM entries WHERE user_id=%s", [user_id]
        if task is not None:
            sql, args = sql + " AND task=%s", args + [task]
        rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [{"id": eid, "task": t, "created": created, **json.loads(fields)} for eid, t, fields, created in rows]

    def list_entries(self, user_id: str, task: str | None = None) -> list[dict]:
        with self._transaction(read_only=True) as conn:
            return self._rows(conn, user_id, task)

    def snapshot(self, user_id: str, task: str) -> tuple[int, list[dict]]:
        with self._transaction(read_only=True) as conn:  # REPEATABLE READ: version and rows agree
            row = conn.execute("SELECT version FROM users WHERE user_id=%s", (user_id,)).fetchone()
            if row is None:
                raise StoreError(404, f"no user '{user_id}'")
            return row[0], self._rows(conn, user_id, task)

    def version(self, user_id: str) -> int:
        with self._transaction(read_only=True) as conn:
            row = conn.execute("SELECT version FROM users WHERE user_id=%s", (user_id,)).fetchone()
        if row is None:
            raise StoreError(404, f"no user '{user_id}'")
        return row[0]

    def check(self) -> str:
        try:
            with self._transaction(read_only=True) as conn:
                conn.execute("SELECT count(*) FROM users").fetchone()
        except (StoreError, self.psycopg.Error) as err:
            return str(err)
        return "ok"

    def check_writable(self) -> str:
        try:
            with self._transaction() as conn:
                conn.execute("INSERT INTO write_probe (id, at) VALUES (1, %s) "
                             "ON CONFLICT (id) DO UPDATE SET at=excluded.at", (_now(),))
        except (StoreError, self.psycopg.Error) as err:
            return str(err)
        return "ok"

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def _rollback(conn) -> None:
    if not conn.closed and not conn.broken:
        conn.rollback()
