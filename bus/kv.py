"""Small reads and writes of NATS KV buckets (declared in bus/streams.py).

Buckets declared with `per_key_ttl` take a TTL on each write; an expired key reads as
missing. `create` and `update` are compare-and-set: the one safe way to claim a key
(an email, an activation code) or to move a record (a refresh token) when several
edge processes race.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import cast

import nats.js.errors
from nats.js import api

from bus.client import Bus
from bus.errors import ConflictError

WRONG_LAST_SEQUENCE = 10071
_KEY_EXISTS = 10164  # JetStream: "wrong last sequence" on a create of a live key


@dataclass(frozen=True, slots=True)
class KvEntry:
    value: bytes
    revision: int


def _ttl_header(ttl: float | None) -> dict[str, str]:
    # JetStream counts per-message TTLs in whole seconds (at least one).
    return {"Nats-TTL": f"{max(1, math.ceil(ttl))}s"} if ttl else {}


async def put(bus: Bus, bucket: str, key: str, value: bytes, *, ttl: float | None = None) -> int:
    if ttl is None:
        kv = await bus.js.key_value(bucket)
        return await kv.put(key, value)
    ack = await bus.js.publish(f"$KV.{bucket}.{key}", value, headers=_ttl_header(ttl))
    return ack.seq


async def get(bus: Bus, bucket: str, key: str) -> bytes | None:
    entry = await get_entry(bus, bucket, key)
    return entry.value if entry else None


async def get_entry(bus: Bus, bucket: str, key: str) -> KvEntry | None:
    kv = await bus.js.key_value(bucket)
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return KvEntry(entry.value, cast(int, entry.revision)) if entry.value else None  # a read entry has one


async def create(bus: Bus, bucket: str, key: str, value: bytes, *,
                 ttl: float | None = None) -> int | None:
    """Write `key` only if it holds nothing; its revision, or None when it is taken."""
    kv = await bus.js.key_value(bucket)
    try:
        return await kv.create(key, value, msg_ttl=math.ceil(ttl) if ttl else None)
    except nats.js.errors.KeyWrongLastSequenceError:
        return None
    except nats.js.errors.APIError as exc:
        if exc.err_code in (WRONG_LAST_SEQUENCE, _KEY_EXISTS):
            return None
        raise


async def update(bus: Bus, bucket: str, key: str, value: bytes, *, last: int,
                 ttl: float | None = None) -> int:
    """Write `key` only if it is still at revision `last`; ConflictError otherwise."""
    headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last), **_ttl_header(ttl)}
    subject = f"$KV.{bucket}.{key}"
    try:
        ack = await bus.js.publish(subject, value, headers=headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            raise ConflictError(subject, last, exc.description or "") from None
        raise
    return ack.seq


async def delete(bus: Bus, bucket: str, key: str) -> None:
    kv = await bus.js.key_value(bucket)
    await kv.delete(key)


async def remove(bus: Bus, bucket: str, key: str, *, last: int | None = None,
                 marker_ttl: float | None = None) -> bool:
    """Remove `key` and its history. On a `per_key_ttl` bucket the purge marker left behind
    expires after `marker_ttl`, so a bucket of short-lived keys does not keep a marker per key
    for ever. With `last`, only while the key is still at that revision: False once another
    writer moved it on."""
    headers = {"KV-Operation": "PURGE", api.Header.ROLLUP: "sub", **_ttl_header(marker_ttl)}
    if last:
        headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(last)
    try:
        await bus.js.publish(f"$KV.{bucket}.{key}", b"", headers=headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


async def entries(bus: Bus, bucket: str, timeout: float = 10.0) -> dict[str, KvEntry]:
    """Every live key with its value and revision, read in one pass of one ordered consumer
    (`items` costs a request per key)."""
    kv = await bus.js.key_value(bucket)
    watcher = await kv.watchall(ignore_deletes=True)
    out: dict[str, KvEntry] = {}
    try:
        async with asyncio.timeout(timeout):
            async for entry in watcher:
                if entry is None:  # the watcher's marker: everything stored was delivered
                    break
                if entry.value:
                    out[entry.key] = KvEntry(entry.value, entry.revision)
    finally:
        await watcher.stop()
    return out


async def items(bus: Bus, bucket: str) -> dict[str, bytes]:
    """Every live key and its value (deleted and expired keys left out)."""
    kv = await bus.js.key_value(bucket)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    out = {}
    for key in keys:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            out[key] = entry.value
    return out
