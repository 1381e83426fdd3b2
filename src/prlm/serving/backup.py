"""`prlm serve backup FILE` and `prlm serve restore FILE`: a SQLite store copied with SQLite's online
backup API, while the server runs (a consistent snapshot: the copy reads under one shared lock).

A PostgreSQL store is backed up with PostgreSQL's own tools (`pg_dump -Fc`, `pg_restore`; docs/serving.md
gives the procedure): they know its roles, its WAL and its point-in-time recovery, and this wrapper would
only hide them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from prlm import PrlmError
from prlm.serving.store import SQLiteProfileStore, _create_private

PG_PROCEDURE = ("a PostgreSQL database is backed up with pg_dump -Fc and restored with pg_restore; "
                "docs/serving.md (Backup and restore) gives the procedure")


def _sqlite_only(db: str) -> None:
    if db.startswith(("postgresql://", "postgres://")):
        raise PrlmError(PG_PROCEDURE)


def _copy(source: str, target: str) -> None:
    """Page-by-page copy with the online backup API; `target` is created readable by its owner only."""
    _create_private(Path(target))
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    except sqlite3.Error as err:
        raise PrlmError(f"copying '{source}' to '{target}' failed: {err}") from None
    finally:
        dst.close()
        src.close()


def _counts(path: str) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise PrlmError(f"'{path}' fails its integrity check: {' '.join(check.split())[:200]}")
        users, entries = (conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("users", "entries"))
    except sqlite3.Error as err:
        raise PrlmError(f"'{path}' is not a profile database: {err}") from None
    finally:
        conn.close()
    return f"{users} users, {entries} entries"


def backup(db: str, out: str) -> str:
    """Copy the live database `db` to the new file `out`; returns what it holds."""
    _sqlite_only(db)
    if not Path(db).is_file():
        raise PrlmError(f"database '{db}' not found")
    if Path(out).exists():
        raise PrlmError(f"'{out}' exists; back up to a new file")
    _copy(db, out)
    return f"backed up {db} to {out}: {_counts(out)}"


def restore(db: str, source: str) -> str:
    """Fill the new database `db` from the backup `source` (checked first); the server must not be running
    on `db`, and `db` must not hold data: a restore never overwrites a store."""
    _sqlite_only(db)
    if not Path(source).is_file():
        raise PrlmError(f"backup '{source}' not found")
    summary = _counts(source)
    if Path(db).exists() and Path(db).stat().st_size > 0:
        raise PrlmError(f"database '{db}' exists; restore into a new file (move the old one away first)")
    _copy(source, db)
    SQLiteProfileStore(db).close()  # the journal mode and any schema migration of this version
    return f"restored {db} from {source}: {summary}"


def run(action: str, db: str, file: str | None) -> str:
    """`prlm serve backup FILE` / `prlm serve restore FILE` on the store `--db` names."""
    if not file:
        raise PrlmError(f"prlm serve {action} needs a FILE: prlm serve {action} FILE --db DATABASE")
    return backup(db, file) if action == "backup" else restore(db, file)
