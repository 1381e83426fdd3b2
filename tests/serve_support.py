"""Helpers for the serving tests: a config, an app over a fresh database, a real server on a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

ADMIN = "admin-token-for-tests-0123456789"
TASK = "synthetic"


@pytest.fixture(scope="module")
def tiny_generator(tiny_llama_dir):
    """(HFGenerator, tokenizer) over conftest's tiny random Llama; import it into a test module to use it."""
    from prlm.generation import make_generator

    return make_generator(tiny_llama_dir, backend="hf", device="cpu", batch_size=8)


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

    def __init__(self, app):
        import uvicorn

        from prlm.serving.client import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
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


# --- a throwaway PostgreSQL cluster -----------------------------------------------------------------

def _postgres_bin():
    """The folder of Debian's PostgreSQL server binaries (the newest version installed), or None."""
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _unavailable(reason: str):
    """Under CI the PostgreSQL tests must run: a missing server fails them; elsewhere they skip."""
    import os

    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the PostgreSQL tests: `make test` installs Debian's postgresql)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_cluster():
    """A PostgreSQL server for this test session: initdb + pg_ctl in a temporary folder, listening on
    127.0.0.1 only, stopped and removed at the end. PostgreSQL refuses to run as root, so as root the
    cluster belongs to (and runs as) the `postgres` system user that Debian's package creates.
    Yields a function: database name -> URL."""
    import os
    import pwd
    import shutil
    import subprocess
    import tempfile

    from prlm.serving.client import free_port

    bin_dir = _postgres_bin()
    if bin_dir is None:
        _unavailable("PostgreSQL server binaries not found (install Debian's postgresql package)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="prlm-pg-"))  # not under pytest's root-only folder: postgres must reach it
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run the server as")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()

    def run(*cmd):
        result = subprocess.run([*run_as, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {result.stdout}{result.stderr}")

    try:
        run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        run(bin_dir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-t", "60", "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start")
    except Exception:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield lambda dbname: f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    finally:
        subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster):
    """A new, empty database on the session's cluster; its URL."""
    import secrets

    import psycopg

    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(postgres_cluster("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_cluster(name)
