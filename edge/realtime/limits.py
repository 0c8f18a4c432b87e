"""Per-connection limits and the close codes that explain them.

Close codes: the standard ones where they fit (1001 going away, 1008 policy
violation, 1009 message too big, 1013 try again later) and 4000 + the HTTP
status for refusals the REST API would answer with that status (4401, 4404, 4409, 4410).
"""

from __future__ import annotations

import time

GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009
TRY_LATER = 1013


def refusal(status: int) -> int:
    return 4000 + status


class MessageRate:
    """A token bucket: `rate` messages per second on average, bursts of `2 × rate`
    (a device sends 16 Opus frames a second; a flood sends thousands)."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.capacity = 2.0 * rate
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class AddressSlots:
    """Real-time connections held per client address, from admission to their end: one
    address must not take every connection the edge has (`edge.max_sessions_per_address`)."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def take(self, address: str, limit: int) -> bool:
        """One more for `address`, unless it holds `limit` already."""
        held = self._held.get(address, 0)
        if held >= limit:
            return False
        self._held[address] = held + 1
        return True

    def give(self, address: str) -> None:
        held = self._held.get(address, 0) - 1
        if held > 0:
            self._held[address] = held
        else:
            self._held.pop(address, None)  # an address holding nothing takes no memory

    def held(self, address: str) -> int:
        return self._held.get(address, 0)
