"""Durability: SIGKILL a real `prlm serve` process during a stream of writes, restart, nothing acknowledged lost."""

from __future__ import annotations

import sqlite3

import pytest
from support import ADMIN, TASK, entry
from tools.faulttest import ServerProcess, run_fault_test

from prlm.serving.client import Client


@pytest.mark.slow
def test_sigkill_during_writes_loses_no_acknowledged_write(tmp_path):
    report = run_fault_test(str(tmp_path / "fault.sqlite"), model="none", rounds=2, writers=4, kill_after=40,
                            log_path=str(tmp_path / "server.log"))
    assert report["acked"] >= 80, report  # both rounds wrote before their kill
    assert report["missing"] == 0, report
    assert report["integrity_check"] == "ok", report
    assert report["unacked_but_present"] <= 2 * 4  # at most the requests in flight at each kill
    assert all(r["missing"] == 0 for r in report["per_round"]), report


@pytest.mark.slow
def test_restart_keeps_users_tokens_and_profiles(tmp_path):
    db = str(tmp_path / "p.sqlite")
    server = ServerProcess(db, "none", ADMIN)
    try:
        server.wait_healthy()
        status, reply = Client(server.url, ADMIN).request("POST", "/v1/users", {"user_id": "alice"})
        assert status == 201
        alice = Client(server.url, reply["token"])
        assert alice.request("POST", "/v1/users/alice/entries",
                             {"task": TASK, "entries": [entry("a1", "T", "x")]})[0] == 201
    finally:
        server.kill()
    server = ServerProcess(db, "none", ADMIN)
    try:
        server.wait_healthy()
        alice = Client(server.url, reply["token"])
        status, listing = alice.request("GET", "/v1/users/alice/entries")
        assert status == 200 and [e["id"] for e in listing["entries"]] == ["a1"]
        assert Client(server.url, ADMIN).request("POST", "/v1/users", {"user_id": "alice"})[0] == 409
    finally:
        server.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"  # a rollback journal (issue 26)
    conn.close()


def test_serve_refuses_to_start_without_an_admin_token(tmp_path, monkeypatch, capsys):
    from prlm.cli import main

    monkeypatch.delenv("PRLM_ADMIN_TOKEN", raising=False)
    assert main(["serve", "--db", str(tmp_path / "p.sqlite"), "--model", "none"]) == 2
    assert "no admin token" in capsys.readouterr().err
    monkeypatch.setenv("PRLM_ADMIN_TOKEN", "short")
    assert main(["serve", "--db", str(tmp_path / "p.sqlite"), "--model", "none"]) == 2
    assert "shorter than" in capsys.readouterr().err
    token_file = tmp_path / "admin.token"
    token_file.write_text("")
    token_file.chmod(0o600)
    assert main(["serve", "--db", str(tmp_path / "p.sqlite"), "--admin-token-file", str(token_file)]) == 2
    assert "shorter than" in capsys.readouterr().err
    assert main(["serve", "--db", str(tmp_path / "p.sqlite"), "--admin-token-file", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "p.sqlite").exists()  # nothing was created


def test_serve_config_checks():
    from prlm import PrlmError
    from prlm.serving.config import ServeConfig

    for bad in [dict(k=20), dict(max_k=0), dict(retriever="magic"), dict(allowed_retrievers="bm25", retriever="dense"),
                dict(method="chat"), dict(port=70000), dict(batch_window_ms=-1), dict(max_body_bytes=0)]:
        with pytest.raises(PrlmError):
            ServeConfig(**bad)
    assert ServeConfig(model="some/folder").resolved_model() == "some/folder"


def test_model_auto_prefers_the_trained_checkpoint(tmp_path, monkeypatch):
    from prlm.serving.config import BASE_MODEL, TRAINED_DEFAULT, ServeConfig

    monkeypatch.chdir(tmp_path)
    assert ServeConfig().resolved_model() == BASE_MODEL
    final = tmp_path / TRAINED_DEFAULT
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    assert ServeConfig().resolved_model() == TRAINED_DEFAULT
    assert ServeConfig(model="smollm2-135m").resolved_model() == "smollm2-135m"
