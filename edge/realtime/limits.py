"""Per-connection and per-session limits, and the close codes that explain them.

Close codes: the standard ones where they fit (1001 going away, 1008 policy
violation, 1009 message too big, 1013 try again later) and 4000 + the HTTP
status for refusals the REST API would answer with that status (4401, 4404, 4409, 4410).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from edge.errors import ApiError
from schemas import AssistantMessage, Error, Event, SessionEnded, SessionRefused
from settings.config import EdgeSettings

GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009
TRY_LATER = 1013


def refusal(status: int) -> int:
    return 4000 + status


def busy(event: SessionRefused) -> ApiError:
    """What every transport tells a client whose session was refused for want of capacity
    (`session.refused`): the code, a sentence, and when to try again."""
    return ApiError(503, event.reason, f"every voice worker is busy: try again in "
                                       f"{event.retry_after_s} s",
                    {"retry_after": event.retry_after_s})


# A typed turn counts as waiting for its answer at most this long: an answer that never
# comes back (the dialogue down, an event lost) does not lock the session.
TURN_WAIT_SECONDS = 60.0
# Against the turn rate, a typed turn counts once per this many characters begun: what a
# turn costs (its prompt, and every later prompt of the session) grows with its length.
TURN_CHARS = 400


class MessageRate:
    """A token bucket: `rate` messages per second on average, bursts of `burst` (by default
    `2 × rate`: a device sends 16 Opus frames a second; a flood sends thousands)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.capacity = float(2.0 * rate if burst is None else burst)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def allow(self, cost: float = 1.0) -> bool:
        """Take `cost` tokens (at most the capacity), if there are as many."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        cost = min(cost, self.capacity)
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def wait(self, cost: float = 1.0) -> float:
        """Seconds until `allow(cost)` would say yes (as of its last call)."""
        return max(0.0, (min(cost, self.capacity) - self.tokens) / self.rate)

    def owe(self, cost: float = 1.0) -> float:
        """Take `cost` tokens even when there are not as many (something already done must be
        paid for); the seconds until the bucket is out of debt again."""
        self.allow(0.0)
        self.tokens -= cost
        return max(0.0, -self.tokens / self.rate)

    def give_back(self, cost: float) -> None:
        """Tokens taken for something that did not happen after all."""
        self.tokens = min(self.capacity, self.tokens + min(cost, self.capacity))


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


def turn_rates(edge: EdgeSettings) -> AddressRates:
    """The typed-turn buckets of client addresses (TurnLimit's `address`)."""
    return AddressRates(edge.max_turns_per_address_second, 2 * edge.turn_burst)


class AddressRates:
    """A token bucket (MessageRate) per client address, for what one address may start a
    second however many connections it uses. A bucket full again is forgotten when the
    table grows: an address that stopped takes no memory for long."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, MessageRate] = {}

    def wait(self, address: str) -> float:
        """0 and one taken from the address's bucket, or how many seconds until it holds one."""
        bucket = self.bucket(address)
        return 0.0 if bucket.allow() else bucket.wait()

    def bucket(self, address: str) -> MessageRate:
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= 10_000:
                self._forget_full()
            bucket = self._buckets[address] = MessageRate(self.rate, self.burst)
        return bucket

    def _forget_full(self) -> None:
        now = time.monotonic()
        self._buckets = {address: bucket for address, bucket in self._buckets.items()
                         if bucket.tokens + (now - bucket.stamp) * bucket.rate < bucket.capacity}


class TurnLimit:
    """The typed turns (`user.text`, xiaozhi `listen detect`) one session may open: at most
    `edge.max_waiting_turns` still waiting for their answer, and `edge.max_turns_per_second`
    on average (bursts of `edge.turn_burst`), a turn counting once per TURN_CHARS characters
    begun (a 2,000-character one five times). A person waits for the answer, or adds a
    correction or two; a client sending turns as fast as it may send messages would fill
    the actors' queues with one session's work, every other session waiting behind it.

    A turn waits from its input until its closing `assistant.message` (an interrupted one
    too: every turn gets one) or an `error` for it comes back, the session ends, or
    TURN_WAIT_SECONDS pass.

    `address`: the client address's bucket (`edge.max_turns_per_address_second`), which
    every session of that address takes from as well: one client opening more sessions
    does not get more turns."""

    def __init__(self, edge: EdgeSettings, address: MessageRate | None = None) -> None:
        self.waiting = edge.max_waiting_turns
        self.per_second = edge.max_turns_per_second
        self.burst = edge.turn_burst
        self.rate = MessageRate(edge.max_turns_per_second, edge.turn_burst)
        self.address = address
        self._open: dict[str, float] = {}  # turn id → when its input was sent

    def admit(self, turn_id: str, chars: int = 0) -> None:
        """Count `turn_id` (of `chars` characters) as opened, or refuse it (429
        `too_many_turns`): nothing of a refused turn is stored."""
        now = time.monotonic()
        for turn, at in list(self._open.items()):
            if now - at > TURN_WAIT_SECONDS:
                del self._open[turn]
        # `retry_after`: the connection reads nothing more from its client for that long
        # (edge.realtime.connection): a flood waits in the client's own buffers.
        if len(self._open) >= self.waiting:
            raise ApiError(429, "too_many_turns",
                           f"{len(self._open)} turns are waiting for their answer: wait for one",
                           {"waiting": len(self._open), "limit": self.waiting,
                            "retry_after": _seconds(1.0 / self.per_second)})
        cost = max(1, -(-chars // TURN_CHARS))
        if not self.rate.allow(cost):
            raise ApiError(429, "too_many_turns",
                           f"at most {self.per_second:g} turns a second (bursts of {self.burst}; "
                           f"a turn counts once per {TURN_CHARS} characters): slow down",
                           {"per_second": self.per_second, "burst": self.burst, "counts": cost,
                            "retry_after": _seconds(self.rate.wait(cost))})
        if self.address is not None and not self.address.allow(cost):
            self.rate.give_back(cost)
            raise ApiError(429, "too_many_turns",
                           f"at most {self.address.rate:g} turns a second from one address, all "
                           f"its sessions together (a turn counts once per {TURN_CHARS} "
                           "characters): slow down",
                           {"per_second": self.address.rate, "burst": self.address.capacity,
                            "counts": cost, "per": "address",
                            "retry_after": _seconds(self.address.wait(cost))})
        self._open[turn_id] = now

    def withdraw(self, turn_id: str) -> None:
        """A turn whose input was not stored after all."""
        self._open.pop(turn_id, None)

    def seen(self, event: Event) -> None:
        """One of the session's events, as it comes back to the client."""
        if isinstance(event, SessionEnded):
            self._open.clear()
        elif (isinstance(event, AssistantMessage) and not event.tool_calls) or isinstance(event, Error):
            self._open.pop(event.turn_id or "", None)


# A connection told to wait (a 429 with `retry_after`) this many times within
# IGNORED_WAIT_SECONDS is closed (1008, the refusal's code as the reason): its client sends
# on regardless. Closing drops what it had sent and the edge had not read yet; paused, the
# edge would read that backlog (up to the socket buffers' megabytes) at the turn rate, and a
# flood would go on costing turns for minutes after its client had gone.
IGNORED_WAITS = 3
IGNORED_WAIT_SECONDS = 60.0


def _seconds(value: float) -> float:
    """A wait rounded up to the tenth of a second, as clients are told it."""
    return math.ceil(value * 10) / 10


REFUSAL_LOG_SECONDS = 10.0


class RefusalLog:
    """One connection's refused messages in the log: the first of each code in an interval
    of REFUSAL_LOG_SECONDS at once, the rest as one line with their count when the interval
    is over (at the next refusal, or at `flush` when the connection ends). A flood of
    refusals writes a line every few seconds, not one per message."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._first: dict[str, float] = {}  # code → when its interval began
        self._counted: dict[str, tuple[int, str, dict[str, Any]]] = {}  # code → count, last one

    def refused(self, code: str, reason: str, extra: dict[str, Any]) -> None:
        now = time.monotonic()
        began = self._first.get(code)
        if began is not None and now - began < REFUSAL_LOG_SECONDS:
            count = self._counted.get(code, (0, "", {}))[0]
            self._counted[code] = (count + 1, reason, extra)
            return
        self._flush(code)
        self._first[code] = now
        self.logger.info("client message refused", extra={**extra, "code": code, "reason": reason})

    def flush(self) -> None:
        for code in list(self._counted):
            self._flush(code)

    def _flush(self, code: str) -> None:
        counted = self._counted.pop(code, None)
        if counted is not None:
            count, reason, extra = counted
            self.logger.info("client messages refused", extra={
                **extra, "code": code, "reason": reason, "count": count,
                "seconds": round(time.monotonic() - self._first[code], 1)})
