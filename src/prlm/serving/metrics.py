"""Prometheus text-format metrics: requests, latencies, errors, batch sizes.

Labels carry the route template (`/v1/users/{user_id}/entries`), never a raw
path, so no user id reaches the metrics and their number stays bounded.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}" if labels else f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.total}" if labels else f"{name}_count {self.total}")
        return out


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], _Histogram] = {}
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.batch_seconds = _Histogram(LATENCY_BUCKETS)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.latency.setdefault((method, route), _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)

    def render(self, gauges: dict[str, float] | None = None) -> str:
        with self._lock:
            lines = ["# HELP prlm_requests_total HTTP requests by method, route and status.",
                     "# TYPE prlm_requests_total counter"]
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'prlm_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            lines += ["# HELP prlm_request_errors_total HTTP responses with status >= 500.",
                      "# TYPE prlm_request_errors_total counter",
                      f"prlm_request_errors_total {sum(n for (_, _, s), n in self.requests.items() if s >= 500)}",
                      "# HELP prlm_request_client_errors_total HTTP responses with status 4xx.",
                      "# TYPE prlm_request_client_errors_total counter",
                      f"prlm_request_client_errors_total {sum(n for (_, _, s), n in self.requests.items() if 400 <= s < 500)}",
                      "# HELP prlm_request_duration_seconds Request latency by method and route.",
                      "# TYPE prlm_request_duration_seconds histogram"]
            for (method, route), hist in sorted(self.latency.items()):
                lines += hist.lines("prlm_request_duration_seconds", f'method="{method}",route="{route}"')
            lines += ["# HELP prlm_generate_batch_size Generation requests per model batch.",
                      "# TYPE prlm_generate_batch_size histogram", *self.batch_size.lines("prlm_generate_batch_size", ""),
                      "# HELP prlm_generate_batch_seconds Time of one model batch.",
                      "# TYPE prlm_generate_batch_seconds histogram",
                      *self.batch_seconds.lines("prlm_generate_batch_seconds", "")]
            for name, value in (gauges or {}).items():
                lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
