"""Fault test: SIGKILL the server during a stream of writes, restart it, check nothing acknowledged was lost.

    python -m tools.faulttest --db /tmp/fault.sqlite --rounds 3 --writers 4 --kill-after 200

Each round starts `prlm serve` as a real process on a free loopback port,
lets `writers` clients add entries one per request, kills the server with
SIGKILL once `kill_after` writes were acknowledged (others are in flight),
restarts it on the same database and lists the profile: every acknowledged
entry must be there. At the end SQLite's `PRAGMA integrity_check` must say ok
(for a postgresql:// database, the store's own check).

    python -m tools.faulttest --db postgresql://postgres@127.0.0.1:5432/fault --rounds 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from prlm import PrlmError
from prlm.serving.client import Client, free_port

ADMIN_ENV = "PRLM_ADMIN_TOKEN"
TASK = "synthetic"


class ServerProcess:
    """`prlm serve` in a child process (its own process group, so a kill reaches nothing else)."""

    def __init__(self, db: str, model: str, admin_token: str, port: int | None = None, extra: list[str] | None = None,
                 log_path: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "prlm.cli", "serve", "--db", db, "--model", model, "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning", *(extra or [])]
        env = {**os.environ, ADMIN_ENV: admin_token}
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=self._log, start_new_session=True)

    def wait_healthy(self, timeout: float = 120.0) -> float:
        started = time.perf_counter()
        client = Client(self.url, timeout=5)
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise PrlmError(f"the server exited with code {self.proc.returncode} before answering")
            try:
                if client.request("GET", "/healthz")[0] == 200:
                    return time.perf_counter() - started
            except OSError:
                time.sleep(0.1)
        raise PrlmError(f"the server did not answer /healthz within {timeout} s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not subprocess.DEVNULL:
            self._log.close()


def _writer(url: str, token: str, user: str, name: str, acked: list, failures: list, stop: threading.Event) -> None:
    client = Client(url, token, timeout=30)
    n = 0
    while not stop.is_set():
        entry_id = f"{name}-{n}"
        body = {"task": TASK, "entries": [{"id": entry_id, "text": f"article {entry_id} about the harbor",
                                           "title": f"Harbor story {entry_id}", "date": "2024-05-01"}]}
        try:
            status, reply = client.request("POST", f"/v1/users/{user}/entries", body)
        except (OSError, http.client.HTTPException):
            return  # the server is gone: this write was never acknowledged
        if status == 201 and reply.get("ids") == [entry_id]:
            acked.append(entry_id)
        else:
            failures.append(f"{entry_id}: {status} {reply}")
            return
        n += 1


def _is_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def run_fault_test(db: str, model: str = "none", rounds: int = 1, writers: int = 4, kill_after: int = 50,
                   admin_token: str = "fault-test-admin-token-0123456789", log_path: str | None = None) -> dict:
    if not _is_url(db) and Path(db).exists():
        raise PrlmError(f"'{db}' exists; the fault test starts from a new database")
    user, token, acked_all, results = "fault-user", None, [], []
    for round_no in range(rounds):
        server = ServerProcess(db, model, admin_token, log_path=log_path)
        try:
            start_s = server.wait_healthy()
            admin = Client(server.url, admin_token)
            if token is None:
                status, reply = admin.request("POST", "/v1/users", {"user_id": user})
                if status != 201:
                    raise PrlmError(f"creating the user failed: {status} {reply}")
                token = reply["token"]
            # Before writing more: everything acknowledged in earlier rounds must have survived the kill.
            status, listing = Client(server.url, token).request("GET", f"/v1/users/{user}/entries")
            if status != 200:
                raise PrlmError(f"listing after restart failed: {status} {listing}")
            present = {e["id"] for e in listing["entries"]}
            missing = sorted(set(acked_all) - present)
            results.append({"round": round_no, "restart_s": round(start_s, 2), "acked_before": len(acked_all),
                            "present_after_restart": len(present), "missing": len(missing)})
            if missing:
                raise PrlmError(f"acknowledged writes lost after a SIGKILL: {missing[:5]}")
            acked: list[str] = []
            failures: list[str] = []
            stop = threading.Event()
            threads = [threading.Thread(target=_writer, args=(server.url, token, user, f"r{round_no}w{i}", acked,
                                                              failures, stop)) for i in range(writers)]
            for t in threads:
                t.start()
            deadline = time.perf_counter() + 120
            while len(acked) < kill_after and time.perf_counter() < deadline and not failures:
                time.sleep(0.005)
            server.kill()  # mid-stream: each writer has a request in flight or about to be
            stop.set()
            for t in threads:
                t.join(timeout=60)
            if failures:
                raise PrlmError(f"writes refused before the kill: {failures[:3]}")
            acked_all += acked
            results[-1]["acked_this_round"] = len(acked)
        finally:
            server.stop()
    # One last restart: the writes of the final round must be there too.
    server = ServerProcess(db, model, admin_token, log_path=log_path)
    try:
        start_s = server.wait_healthy()
        status, listing = Client(server.url, token).request("GET", f"/v1/users/{user}/entries")
        present = {e["id"] for e in listing["entries"]}
    finally:
        server.stop()
    missing = sorted(set(acked_all) - present)
    integrity = _integrity(db)
    return {"rounds": rounds, "writers": writers, "kill_after": kill_after, "acked": len(acked_all),
            "present": len(present), "missing": len(missing), "missing_ids": missing[:10],
            "unacked_but_present": len(present - set(acked_all)), "integrity_check": integrity,
            "final_restart_s": round(start_s, 2), "per_round": results}


def _integrity(db: str) -> str:
    if _is_url(db):
        from prlm.serving.storage import open_store

        store = open_store(db)
        try:
            return store.check()
        finally:
            store.close()
    with sqlite3.connect(db) as conn:
        integrity = "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check").fetchall())
    conn.close()
    return integrity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.faulttest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="new SQLite file to create, or the URL of an empty "
                                                     "PostgreSQL database")
    parser.add_argument("--model", default="none", help="model the server loads (default: none; writes do not need "
                                                        "one)")
    parser.add_argument("--rounds", type=int, default=3, help="kill-and-restart cycles (default: 3)")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writing clients (default: 4)")
    parser.add_argument("--kill-after", type=int, default=200, help="acknowledged writes per round before the kill")
    parser.add_argument("--log", default=None, help="file for the servers' output")
    args = parser.parse_args(argv)
    try:
        report = run_fault_test(args.db, args.model, args.rounds, args.writers, args.kill_after, log_path=args.log)
    except PrlmError as err:
        print(f"faulttest: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0 if report["missing"] == 0 and report["integrity_check"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
