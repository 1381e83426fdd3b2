"""Load test: N concurrent clients mixing profile writes and generations, on loopback only.

    PRLM_ADMIN_TOKEN=... python -m tools.loadtest --url http://127.0.0.1:8000 --clients 8 --duration 30

Bounded in count (`--max-requests`) and time (`--duration`); it stops by itself.
Each client writes to and generates for its own user. At the end every
acknowledged write is looked up in the profile ("lost" counts those missing).
Prints throughput, p50/p95/p99 latency, status counts and errors as JSON, and
a Markdown table row with `--markdown`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
from collections import Counter

from prlm import PrlmError
from prlm.serving.client import Client

WORDS = "river market council school storm vote budget museum train festival harbor bridge".split()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))  # nearest rank
    return ordered[rank]


def _article(rng: random.Random) -> str:
    words = rng.sample(WORDS, 4)
    return f"The {words[0]} near the {words[1]} was the talk of the {words[2]} after the {words[3]} meeting."


def _entry(rng: random.Random, entry_id: str) -> dict:
    w = rng.choice(WORDS)
    return {"id": entry_id, "text": _article(rng), "title": f"{w.title()} news {entry_id}",
            "date": "2024-03-0" + str(rng.randint(1, 9))}


def run_load_test(url: str, admin_token: str, clients: int = 4, duration: float = 30.0, max_requests: int = 1000,
                  write_share: float = 0.5, task: str = "synthetic", k: int = 4, seed: int = 0,
                  seed_entries: int = 4) -> dict:
    if not 0 <= write_share <= 1:
        raise PrlmError(f"write_share must be in [0, 1], got {write_share}")
    run = f"{int(time.time())}{random.Random().randint(0, 999):03d}"
    admin = Client(url, admin_token)
    users = []
    for i in range(clients):
        user = f"load-{run}-{i}"
        status, reply = admin.request("POST", "/v1/users", {"user_id": user})
        if status != 201:
            raise PrlmError(f"provisioning {user} failed: {status} {reply}")
        rng = random.Random(f"{seed}-{i}")
        entries = [_entry(rng, f"seed{j}") for j in range(seed_entries)]
        status, reply = Client(url, reply["token"]).request("POST", f"/v1/users/{user}/entries",
                                                            {"task": task, "entries": entries})
        if status != 201:
            raise PrlmError(f"seeding {user} failed: {status} {reply}")
        users.append((user, admin.request("POST", f"/v1/users/{user}/token")[1]["token"]))

    records: list[tuple[str, int, float, int]] = []  # (kind, status or -1, seconds, batch size)
    acked: dict[str, list[str]] = {u: [f"seed{j}" for j in range(seed_entries)] for u, _ in users}
    errors: list[str] = []
    lock, issued = threading.Lock(), [0]
    deadline = time.perf_counter() + duration

    def client_loop(i: int) -> None:
        user, token = users[i]
        client, rng, n = Client(url, token), random.Random(f"{seed}-client-{i}"), 0
        while time.perf_counter() < deadline:
            with lock:
                if issued[0] >= max_requests:
                    return
                issued[0] += 1
            write = rng.random() < write_share
            started = time.perf_counter()
            try:
                if write:
                    entry_id = f"c{i}-{n}"
                    n += 1
                    status, reply = client.request("POST", f"/v1/users/{user}/entries",
                                                   {"task": task, "entries": [_entry(rng, entry_id)]})
                else:
                    status, reply = client.request("POST", f"/v1/users/{user}/generate",
                                                   {"task": task, "input": _article(rng), "k": k})
            except (OSError, http.client.HTTPException) as err:
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                    records.append(("write" if write else "generate", -1, time.perf_counter() - started, 0))
                continue
            elapsed = time.perf_counter() - started
            with lock:
                records.append(("write" if write else "generate", status, elapsed,
                                reply.get("batch_size", 0) if isinstance(reply, dict) and not write else 0))
                if write and status == 201:
                    acked[user].append(entry_id)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,), name=f"load-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started

    lost = 0
    for user, token in users:
        status, listing = Client(url, token).request("GET", f"/v1/users/{user}/entries?task={task}")
        present = {e["id"] for e in listing["entries"]} if status == 200 else set()
        lost += len(set(acked[user]) - present)

    def summarise(kind: str | None) -> dict:
        rows = [r for r in records if kind is None or r[0] == kind]
        lat = [r[2] * 1000 for r in rows if r[1] != -1]
        statuses = Counter(str(r[1]) for r in rows)
        out = {"requests": len(rows), "throughput_rps": round(len(rows) / wall, 2) if wall else 0.0,
               "p50_ms": round(_percentile(lat, 50), 1), "p95_ms": round(_percentile(lat, 95), 1),
               "p99_ms": round(_percentile(lat, 99), 1), "status": dict(statuses),
               "5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
               "connection_errors": statuses.get("-1", 0)}
        if kind == "generate":
            sizes = [r[3] for r in rows if r[1] == 200]
            out["mean_batch_size"] = round(sum(sizes) / len(sizes), 2) if sizes else 0.0
            out["max_batch_size"] = max(sizes, default=0)
        return out

    return {"url": url, "clients": clients, "duration_s": duration, "max_requests": max_requests,
            "write_share": write_share, "wall_s": round(wall, 2), "all": summarise(None),
            "write": summarise("write"), "generate": summarise("generate"),
            "acked_writes": sum(len(v) for v in acked.values()), "lost_writes": lost, "errors": errors[:5]}


def markdown_rows(report: dict) -> str:
    lines = []
    for kind in ("all", "write", "generate"):
        s = report[kind]
        extra = f" (mean batch {s['mean_batch_size']}, max {s['max_batch_size']})" if kind == "generate" else ""
        lines.append(f"| {report['clients']} | {kind}{extra} | {s['requests']} | {s['throughput_rps']} | "
                     f"{s['p50_ms']} | "
                     f"{s['p95_ms']} | {s['p99_ms']} | {s['5xx']} | {s['connection_errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server (loopback only)")
    parser.add_argument("--admin-token-file", default="", help="file with the admin token (else $PRLM_ADMIN_TOKEN)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds at most (default: 30)")
    parser.add_argument("--max-requests", type=int, default=1000, help="requests at most, all clients together")
    parser.add_argument("--write-share", type=float, default=0.5, help="share of requests that are writes (default: "
                                                                       "0.5)")
    parser.add_argument("--task", default="synthetic", help="task of the entries and generations")
    parser.add_argument("--k", type=int, default=4, help="k of the generations")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown table rows")
    args = parser.parse_args(argv)
    from prlm.serving.auth import load_admin_token

    try:
        if args.clients < 1 or args.duration <= 0 or args.max_requests < 1:
            raise PrlmError("clients, duration and max-requests must be positive")
        report = run_load_test(args.url, load_admin_token(args.admin_token_file), args.clients, args.duration,
                               args.max_requests, args.write_share, args.task, args.k)
    except PrlmError as err:
        print(f"loadtest: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    if args.markdown:
        print(markdown_rows(report))
    clean = report["all"]["5xx"] == 0 and report["lost_writes"] == 0 and report["all"]["connection_errors"] == 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
