"""Fixtures the serving tests share: the tiny generator, an app with its TestClient, a throwaway PostgreSQL.

Plain helpers (the admin token, entries, configs, apps, a threaded server) are in support.py beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import make_app

# The load and fault test scripts live in tools/ at the repository root (not in the package): `import tools`
# must work however pytest was started.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def tiny_generator(tiny_llama_dir):
    """(HFGenerator, tokenizer) over tests/conftest.py's tiny random Llama."""
    from prlm.generation import make_generator

    return make_generator(tiny_llama_dir, backend="hf", device="cpu", batch_size=8)


@pytest.fixture
def server(tmp_path, tiny_generator):
    """(TestClient, app) over a fresh database with the tiny generator, started (lifespan run)."""
    from fastapi.testclient import TestClient

    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator)
    with TestClient(app) as client:
        yield client, app
    store.close()


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
