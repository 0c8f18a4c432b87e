"""`Idempotency-Key` on POSTs: the same key with the same body gets the stored response
again (for 24 h); the same key with another body gets 422.

Records live in KV (`vagent_idempotency`), so a retry that reaches another edge is
answered the same. A request still running holds a pending record: a concurrent retry
gets 409. A server error removes the record, so the client can retry.

A stored response can hold secrets (login, refresh and bind answer with tokens), so it is
kept encrypted (AES-GCM) under a key made from the server's secret and the request's own
Idempotency-Key: reading the bucket, without both, reveals no token. The record is named
by a hash that does not give the key away.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


class Sealed(msgspec.Struct):
    """What the bucket holds: the request's fingerprint in the clear (a different body is
    refused without decrypting), the response sealed."""

    body_sha256: str
    done: bool = False
    nonce_b64: str = ""
    sealed_b64: str = ""  # a Stored, encrypted


def _cipher(secret: bytes, scope: str, key: str) -> AESGCM:
    return AESGCM(hmac.new(secret, f"idempotency\n{scope}\n{key}".encode(), hashlib.sha256).digest())


def seal(cipher: AESGCM, record: Stored, kv_key: str) -> Sealed:
    nonce = os.urandom(12)
    sealed = cipher.encrypt(nonce, msgspec.json.encode(record), kv_key.encode())
    return Sealed(body_sha256=record.body_sha256, done=True,
                  nonce_b64=base64.b64encode(nonce).decode(), sealed_b64=base64.b64encode(sealed).decode())


def unseal(cipher: AESGCM, sealed: Sealed, kv_key: str) -> Stored | None:
    """The stored response, or None if it cannot be opened (the server's secret changed)."""
    try:
        plain = cipher.decrypt(base64.b64decode(sealed.nonce_b64), base64.b64decode(sealed.sealed_b64),
                               kv_key.encode())
    except (InvalidTag, ValueError):
        return None
    return msgspec.json.decode(plain, type=Stored)


class Slot:
    """A claimed key: `replay` is set when an earlier response is to be sent again."""

    def __init__(self, bus: Bus, key: str, body_sha256: str, revision: int | None,
                 replay: Stored | None, cipher: AESGCM) -> None:
        self.bus, self.key, self.body_sha256 = bus, key, body_sha256
        self.revision, self.replay, self.cipher = revision, replay, cipher

    async def save(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if self.revision is None:
            return
        if status >= 500:
            await kv.delete(self.bus, BUCKET, self.key)
            return
        record = Stored(body_sha256=self.body_sha256, status=status,
                        body_b64=base64.b64encode(body).decode(), headers=headers)
        try:
            await kv.update(self.bus, BUCKET, self.key,
                            msgspec.json.encode(seal(self.cipher, record, self.key)),
                            last=self.revision, ttl=TTL)
        except ConflictError:
            pass  # expired and re-used meanwhile: the newer request owns it

    async def release(self) -> None:
        if self.revision is not None:
            await kv.delete(self.bus, BUCKET, self.key)


async def claim(bus: Bus, secret: bytes, scope: str, key: str, body: bytes) -> Slot:
    """Claim `key` for this request (`secret`: the server's, shared by every edge)."""
    if not key or len(key) > MAX_KEY or not key.isascii():
        raise ApiError(400, "invalid_idempotency_key",
                       f"Idempotency-Key must be 1-{MAX_KEY} ASCII characters")
    kv_key = hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()
    cipher = _cipher(secret, scope, key)
    body_sha256 = hashlib.sha256(body).hexdigest()
    pending = msgspec.json.encode(Sealed(body_sha256=body_sha256))
    for _ in range(3):
        revision = await kv.create(bus, BUCKET, kv_key, pending, ttl=TTL)
        if revision is not None:
            return Slot(bus, kv_key, body_sha256, revision, None, cipher)
        raw = await kv.get(bus, BUCKET, kv_key)
        if raw is None:
            continue  # it expired or was released in between
        sealed = msgspec.json.decode(raw, type=Sealed)
        if sealed.body_sha256 != body_sha256:
            raise ApiError(422, "idempotency_key_reused",
                           "this Idempotency-Key was used with a different request body")
        if not sealed.done:
            raise ApiError(409, "idempotency_in_progress",
                           "a request with this Idempotency-Key is still running: retry shortly",
                           headers={"Retry-After": "1"})
        stored = unseal(cipher, sealed, kv_key)
        if stored is None:  # sealed under another secret: forget it, run the request anew
            await kv.delete(bus, BUCKET, kv_key)
            continue
        return Slot(bus, kv_key, body_sha256, None, stored, cipher)
    raise ApiError(409, "idempotency_in_progress", "retry shortly", headers={"Retry-After": "1"})
