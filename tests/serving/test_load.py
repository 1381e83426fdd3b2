"""The load test script against a real server on loopback (tiny model, a few seconds)."""

from __future__ import annotations

import pytest
from support import ADMIN, ThreadedServer, make_app
from tools.loadtest import markdown_rows, run_load_test

from prlm import PrlmError


@pytest.mark.slow
def test_load_mix_has_no_5xx_and_loses_no_write(tmp_path, tiny_generator):
    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator, batch_window_ms=20.0)
    with ThreadedServer(app) as server:
        report = run_load_test(server.url, ADMIN, clients=4, duration=8.0, max_requests=120, write_share=0.5)
    store.close()
    assert report["all"]["requests"] > 0 and report["write"]["requests"] > 0 and report["generate"]["requests"] > 0
    assert report["all"]["5xx"] == 0 and report["all"]["connection_errors"] == 0, report
    assert report["lost_writes"] == 0 and report["acked_writes"] >= report["write"]["requests"]
    assert set(report["write"]["status"]) == {"201"} and set(report["generate"]["status"]) == {"200"}
    assert report["all"]["p50_ms"] <= report["all"]["p95_ms"] <= report["all"]["p99_ms"]
    assert report["generate"]["max_batch_size"] >= 1
    assert markdown_rows(report).count("\n") == 2


def test_load_test_refuses_non_loopback_targets():
    for url in ("http://10.0.0.5:8000", "http://example.com", "https://127.0.0.1:8000"):
        with pytest.raises(PrlmError):
            run_load_test(url, ADMIN, clients=1, duration=1, max_requests=1)
