"""A per-client-IP sliding window for the endpoints a password guesser would hammer.

Per process: a deployment with N edges allows N times the limit, which still stops a
single client's brute force (the account lockout stops a distributed one)."""

from __future__ import annotations

import time
from collections import deque

from edge.errors import ApiError


class RateLimiter:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}

    def check(self, key: str) -> None:
        now = time.monotonic()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            retry = max(1, int(hits[0] + self.window - now + 0.999))
            raise ApiError(429, "rate_limited", f"too many requests: try again in {retry} s",
                           {"retry_after": retry}, {"Retry-After": str(retry)})
        hits.append(now)
        if len(self._hits) > 10_000:  # forget idle clients
            self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > now - self.window}
