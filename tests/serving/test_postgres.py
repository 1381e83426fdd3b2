"""Serving on PostgreSQL: real `prlm serve` processes on a throwaway cluster (loopback only).

Skipped with the reason when PostgreSQL is not installed, failed under CI (see conftest.py).
"""

from __future__ import annotations

import threading

import pytest
from support import ADMIN, TASK, entry
from tools.faulttest import ServerProcess, run_fault_test

from prlm.serving.client import Client


@pytest.mark.slow
def test_sigkill_during_writes_loses_no_acknowledged_write_on_postgres(postgres_url, tmp_path):
    report = run_fault_test(postgres_url, model="none", rounds=2, writers=4, kill_after=40,
                            log_path=str(tmp_path / "server.log"))
    assert report["acked"] >= 80, report
    assert report["missing"] == 0 and report["integrity_check"] == "ok", report
    assert report["unacked_but_present"] <= 2 * 4
    assert all(r["missing"] == 0 for r in report["per_round"]), report


@pytest.mark.slow
def test_two_api_processes_on_one_database_agree(postgres_url, tmp_path):
    servers = [ServerProcess(postgres_url, "none", ADMIN, log_path=str(tmp_path / f"server{i}.log")) for i in (0, 1)]
    try:
        for server in servers:
            server.wait_healthy()
        a_admin, b_admin = (Client(s.url, ADMIN) for s in servers)
        status, reply = a_admin.request("POST", "/v1/users", {"user_id": "alice"})
        assert status == 201
        token = reply["token"]
        assert b_admin.request("POST", "/v1/users", {"user_id": "ALICE"})[0] == 409  # one user, seen by both
        # Both processes write to alice at once; each write is answered by one and seen by the other.
        acked, errors = {0: [], 1: []}, []

        def write(i):
            client = Client(servers[i].url, token)
            for n in range(15):
                eid = f"p{i}-{n}"
                status, body = client.request("POST", "/v1/users/alice/entries",
                                              {"task": TASK, "entries": [entry(eid, "t", f"text {eid}")]})
                (acked[i].append(eid) if status == 201 else errors.append((status, body)))

        threads = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        listings = [Client(s.url, token).request("GET", "/v1/users/alice/entries")[1] for s in servers]
        assert listings[0] == listings[1]  # the same entries in the same order, the same version
        assert {e["id"] for e in listings[0]["entries"]} == set(acked[0]) | set(acked[1])
        assert listings[0]["version"] == 30
        # A token rotated on one process stops working on the other at once.
        status, reply = b_admin.request("POST", "/v1/users/alice/token")
        assert status == 200
        assert Client(servers[0].url, token).request("GET", "/v1/me")[0] == 401
        assert Client(servers[0].url, reply["token"]).request("GET", "/v1/me")[1]["user_id"] == "alice"
        # A delete on one is seen by the other.
        new = reply["token"]
        assert Client(servers[0].url, new).request("DELETE", "/v1/users/alice/entries/p1-0")[0] == 200
        ids = {e["id"] for e in Client(servers[1].url, new).request("GET", "/v1/users/alice/entries")[1]["entries"]}
        assert "p1-0" not in ids and len(ids) == 29
        for s in servers:
            ready = Client(s.url).request("GET", "/readyz")
            assert ready[0] == 200 and ready[1]["db"] == "ok", ready
    finally:
        for server in servers:
            server.stop()


def test_serve_refuses_an_unreachable_postgres(monkeypatch, capsys, postgres_cluster):
    import uvicorn

    from prlm.cli import main
    from prlm.serving.client import free_port

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server must not start"))
    monkeypatch.setenv("PRLM_ADMIN_TOKEN", ADMIN)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nobody listens there
    assert main(["serve", "--model", "none", "--db", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot connect" in err[0]


def test_unreachable_postgres_shows_in_readyz_at_once(postgres_url):
    """Issue 26: a failed connection was known to /readyz only at the next periodic check (up to 5 s)."""
    from fastapi.testclient import TestClient
    from support import bearer, serve_config

    from prlm.serving.app import create_app
    from prlm.serving.client import free_port
    from prlm.serving.pgstore import PostgresProfileStore

    store = PostgresProfileStore(postgres_url, connect_timeout_s=2)
    cfg = serve_config(postgres_url, model="none", ready_check_interval_s=3600)  # the periodic check: never
    app = create_app(cfg, store, ADMIN, model_name="none")
    with TestClient(app) as client:
        token = client.post("/v1/users", json={"user_id": "alice"}, headers=bearer(ADMIN)).json()["token"]
        assert client.get("/readyz").status_code == 200
        store.close()
        store.url = f"postgresql://postgres@127.0.0.1:{free_port()}/gone"  # the server went away
        r = client.post("/v1/users/alice/entries", headers=bearer(token),
                        json={"task": TASK, "entries": [entry("a", "t", "x")]})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and any("cannot connect" in p for p in ready.json()["problems"]), ready.text
    store.close()
