"""Event ids: ULIDs (time-sortable, 26 chars of Crockford base32).

An actor that emits events because of another event derives their ids from the
cause, so a redelivered message re-emits the *same* ids and JetStream's
`Nats-Msg-Id` dedupe stores each effect once.
"""

from __future__ import annotations

import hashlib
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _encode(ts_ms: int, rand: bytes) -> str:
    value = (ts_ms << 80) | int.from_bytes(rand[:10], "big")
    out = []
    for _ in range(26):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id() -> str:
    return _encode(time.time_ns() // 1_000_000, os.urandom(10))


def derived_id(cause_id: str, actor: str, index: int) -> str:
    """A ULID stable for (cause, actor, index); it sorts right after its cause."""
    digest = hashlib.blake2b(f"{cause_id}|{actor}|{index}".encode(), digest_size=10).digest()
    return _encode(id_time_ms(cause_id), digest)


def id_time_ms(ulid: str) -> int:
    value = 0
    for ch in ulid[:10]:
        value = (value << 5) | _ALPHABET.index(ch)
    return value
