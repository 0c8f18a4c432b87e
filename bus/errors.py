"""Errors the bus raises, in vagent's terms rather than nats.py's."""

from __future__ import annotations


class BusError(Exception):
    """NATS could not be reached or refused an operation."""


class Unreachable(BusError):
    """Nothing listens at the NATS address: every server refused the connection."""


class ConflictError(BusError):
    """A conditional append found the aggregate changed since it was read (JetStream 10071)."""

    def __init__(self, subject: str, expected: int, detail: str = "") -> None:
        super().__init__(f"stale append to {subject}: expected last sequence {expected}. {detail}")
        self.subject = subject
        self.expected = expected


class BatchError(BusError):
    """An atomic batch was rejected; none of its events were stored."""
