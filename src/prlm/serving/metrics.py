"""Prometheus metrics (prometheus_client): requests, latencies, errors, disconnects, batches, stages.

Every label set is bounded whatever clients send: the method is one of the
standard HTTP methods or `other` (h11 accepts any token as a method), the
route is a route template (`/v1/users/{user_id}/entries`) or `unmatched`,
never a raw path, and the status is one the server itself chose. So no user
id reaches the metrics, and a stream of made-up methods or paths adds no
series. Each app has its own registry (several apps live in one test process).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401 (re-exported for the app)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The `_created` timestamp series double the page and say nothing a scraper needs.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STAGES = ("retrieval", "queue", "generation")


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("prlm_requests", "HTTP requests by method, route and status.",
                                ("method", "route", "status"), registry=r)
        self.errors = Counter("prlm_request_errors", "HTTP responses with status >= 500.", registry=r)
        self.client_errors = Counter("prlm_request_client_errors", "HTTP responses with status 4xx.", registry=r)
        self.disconnects = Counter("prlm_request_disconnects",
                                   "Requests whose client left before the answer (not counted as errors).",
                                   ("method", "route"), registry=r)
        self.latency = Histogram("prlm_request_duration_seconds", "Request latency by method and route.",
                                 ("method", "route"), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("prlm_generate_batch_size", "Generation requests per model batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("prlm_generate_batch_seconds", "Time of one model batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        # Per-stage times are only shown here, summed over all users: a response carries no stage timing.
        self.stage_seconds = Histogram("prlm_generate_stage_seconds", "Time of each stage of a generation request.",
                                       ("stage",), buckets=LATENCY_BUCKETS, registry=r)
        self.dropped = Counter("prlm_generate_dropped",
                               "Generation requests dropped before generation because their client left.", registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method_label(method)
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status >= 500:
            self.errors.inc()
        elif status >= 400:
            self.client_errors.inc()

    def observe_disconnect(self, method: str, route: str) -> None:
        self.disconnects.labels(method_label(method), route).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}'")
        self.stage_seconds.labels(stage).observe(seconds)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge read when /metrics is scraped."""
        Gauge(name, help_text, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
