"""Per-user admission: a request rate (token bucket) and a cap on requests in progress.

The cap on requests in progress is what keeps one user from filling the worker threads everyone shares: a
user's requests that wait on that user's own index (a dense build) each hold a thread while they wait.
Only authenticated users are tracked, so the table is bounded by the users the admin created.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float
    inflight: int = 0


class UserLimits:
    def __init__(self, rate: float, burst: int, max_inflight: int, clock=time.monotonic):
        """`rate`: requests per second on average (0: no rate limit); `burst`: the bucket's size."""
        self.rate, self.burst, self.max_inflight, self.clock = rate, burst, max_inflight, clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def admit(self, who: str) -> tuple[str, int] | None:
        """None when `who` may go on (then call `release` once the request is done), else
        (why, seconds to wait) for a 429 with Retry-After."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault(who, _Bucket(float(self.burst), now))
            if bucket.inflight >= self.max_inflight:
                return f"at most {self.max_inflight} requests of one user in progress at once", 1
            if self.rate > 0:
                bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
                bucket.at = now
                if bucket.tokens < 1:
                    wait = math.ceil((1 - bucket.tokens) / self.rate)
                    return f"over the rate of {self.rate:g} requests per second per user", wait
                bucket.tokens -= 1
            bucket.inflight += 1
        return None

    def release(self, who: str) -> None:
        with self._lock:
            bucket = self._buckets.get(who)
            if bucket is not None:
                bucket.inflight -= 1

    def forget(self, who: str) -> None:
        with self._lock:
            self._buckets.pop(who, None)

    def inflight(self, who: str) -> int:
        with self._lock:
            bucket = self._buckets.get(who)
            return bucket.inflight if bucket else 0
