"""Generation requests that arrive together are batched across users."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from support import TASK, entry, make_app, provision


def test_concurrent_generations_share_a_batch(tmp_path, tiny_generator):
    # A long window so that requests sent together on a loaded machine still meet in one batch.
    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator, batch_window_ms=1500.0, max_batch=4)
    with TestClient(app) as client:
        users = {}
        for i in range(6):
            users[f"u{i}"] = provision(client, f"u{i}")
            client.post(f"/v1/users/u{i}/entries", headers=users[f"u{i}"], json={"task": TASK, "entries": [
                entry(f"own{i}", f"Story {i}", f"user {i} wrote about the harbor")]})
        results, barrier = {}, threading.Barrier(6)

        def call(user):
            barrier.wait()
            results[user] = client.post(f"/v1/users/{user}/generate", headers=users[user],
                                        json={"task": TASK, "input": "the harbor", "k": 4})

        threads = [threading.Thread(target=call, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sizes = list(app.state.prlm.batcher.batch_sizes)
        assert all(r.status_code == 200 for r in results.values()), [r.text for r in results.values()]
        assert sum(sizes) == 6 and max(sizes) == 4 and len(sizes) == 2, sizes  # max_batch caps a batch
        # Each user got their own entries back, whatever batch they were in.
        for user, r in results.items():
            assert [h["id"] for h in r.json()["retrieved"]] == [f"own{user[1:]}"]
        assert sorted(r.json()["batch_size"] for r in results.values()) == sorted(s for s in sizes for _ in range(s))
        metrics = client.get("/metrics").text
        assert ('prlm_generate_batch_size_bucket{le="4.0"} 2' in metrics
                and "prlm_generate_batch_size_count 2" in metrics)
    store.close()


def test_a_lone_request_is_not_held_past_the_window(tmp_path, tiny_generator):
    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator, batch_window_ms=10.0)
    with TestClient(app) as client:
        alice = provision(client, "alice")
        r = client.post("/v1/users/alice/generate", headers=alice, json={"task": TASK, "input": "x"})
        assert r.status_code == 200 and r.json()["batch_size"] == 1
        queued = app.state.prlm.metrics.stage_seconds.labels("queue")  # stage times are in /metrics only
        assert queued._sum.get() < 1.0
    store.close()


def test_batcher_unit_groups_and_caps():
    import asyncio

    from prlm.serving.batcher import Batcher

    seen = []

    def run(batch):
        seen.append(list(batch))
        return [x * 10 for x in batch]

    async def main():
        b = Batcher(run, max_batch=3, window_s=0.2, max_queue=100)
        await b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(7)))
        await b.stop()
        return out

    out = asyncio.run(main())
    assert [r for r, _ in out] == [i * 10 for i in range(7)]
    assert [len(x) for x in seen] == [3, 3, 1]
    assert [info.batch_size for _, info in out] == [3, 3, 3, 3, 3, 3, 1]


def test_batcher_failure_reaches_every_request():
    import asyncio

    from prlm.serving.batcher import Batcher

    def run(batch):
        raise ValueError("model exploded")

    async def main():
        b = Batcher(run, max_batch=4, window_s=0.05)
        await b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        await b.stop()
        return out

    out = asyncio.run(main())
    assert all(isinstance(x, ValueError) for x in out)
