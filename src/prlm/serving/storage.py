"""`open_store`: the profile store a `--db` value names.

It sits above both implementations (`store.py` holds the interface and SQLite, `pgstore.py` PostgreSQL, which
builds on the interface), so neither imports the other's module back.
"""

from __future__ import annotations

from prlm.serving.store import ProfileStore, SQLiteProfileStore


def open_store(db: str) -> ProfileStore:
    """A postgresql:// URL for PostgreSQL (psycopg loads only then), else a SQLite file."""
    if db.startswith(("postgresql://", "postgres://")):
        from prlm.serving.pgstore import PostgresProfileStore

        return PostgresProfileStore(db)
    return SQLiteProfileStore(db)
