"""`Idempotency-Key` on POSTs: the same key with the same body gets the stored response
again (for 24 h); the same key with another body gets 422.

Records live in KV (`vagent_idempotency`), so a retry that reaches another edge is
answered the same. A request still running holds a pending record: a concurrent retry
gets 409. A server error removes the record, so the client can retry.
"""

from __future__ import annotations

import base64
import hashlib

import msgspec

from bus import kv
from bus.client import Bus
from bus.errors import ConflictError
from edge.errors import ApiError

BUCKET = "vagent_idempotency"
TTL = 86_400.0
MAX_KEY = 255


class Stored(msgspec.Struct):
    body_sha256: str
    status: int = 0  # 0: still running
    body_b64: str = ""
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class Slot:
    """A claimed key: `replay` is set when an earlier response is to be sent again."""

    def __init__(self, bus: Bus, key: str, body_sha256: str, revision: int | None,
                 replay: Stored | None) -> None:
        self.bus, self.key, self.body_sha256 = bus, key, body_sha256
        self.revision, self.replay = revision, replay

    async def save(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if self.revision is None:
            return
        if status >= 500:
            await kv.delete(self.bus, BUCKET, self.key)
            return
        record = Stored(body_sha256=self.body_sha256, status=status,
                        body_b64=base64.b64encode(body).decode(), headers=headers)
        try:
            await kv.update(self.bus, BUCKET, self.key, msgspec.json.encode(record),
                            last=self.revision, ttl=TTL)
        except ConflictError:
            pass  # expired and re-used meanwhile: the newer request owns it

    async def release(self) -> None:
        if self.revision is not None:
            await kv.delete(self.bus, BUCKET, self.key)


async def claim(bus: Bus, scope: str, key: str, body: bytes) -> Slot:
    if not key or len(key) > MAX_KEY or not key.isascii():
        raise ApiError(400, "invalid_idempotency_key",
                       f"Idempotency-Key must be 1-{MAX_KEY} ASCII characters")
    kv_key = hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()
    body_sha256 = hashlib.sha256(body).hexdigest()
    pending = msgspec.json.encode(Stored(body_sha256=body_sha256))
    for _ in range(3):
        revision = await kv.create(bus, BUCKET, kv_key, pending, ttl=TTL)
        if revision is not None:
            return Slot(bus, kv_key, body_sha256, revision, None)
        raw = await kv.get(bus, BUCKET, kv_key)
        if raw is None:
            continue  # it expired or was released in between
        stored = msgspec.json.decode(raw, type=Stored)
        if stored.body_sha256 != body_sha256:
            raise ApiError(422, "idempotency_key_reused",
                           "this Idempotency-Key was used with a different request body")
        if stored.status == 0:
            raise ApiError(409, "idempotency_in_progress",
                           "a request with this Idempotency-Key is still running: retry shortly",
                           headers={"Retry-After": "1"})
        return Slot(bus, kv_key, body_sha256, None, stored)
    raise ApiError(409, "idempotency_in_progress", "retry shortly", headers={"Retry-After": "1"})
