"""Small reads and writes of NATS KV buckets (declared in bus/streams.py).

Buckets declared with `per_key_ttl` take a TTL on each write; an expired key reads as
missing. `create` and `update` are compare-and-set: the one safe way to claim a key
(an email, an activation code) or to move a record (a refresh token) when several
edge processes race.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import cast

import nats.errors
import nats.js.errors
from nats.js import api

from bus.client import Bus, next_message
from bus.errors import BusError, ConflictError

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
    that delivers each key's last message.

    Not nats-py's watcher (nor `KeyValue.keys`, built on it): it marks "everything stored was
    delivered" when its consumer's info answers before the first message has arrived, which
    a busy machine makes happen, and a bucket of keys then reads as empty. Here the end is
    each message's own count of what is still pending, and emptiness the stream's state.
    Its consumer is left to the server's default inactivity cleanup (seconds), not the
    watcher's five minutes: frequent readers would otherwise pile up consumers."""
    stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
    out: dict[str, KvEntry] = {}
    if not await _holds_messages(bus, stream):
        return out
    sub = await bus.js.subscribe(prefix + ">", stream=stream, ordered_consumer=True,
                                 deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise BusError(f"reading KV bucket {bucket} took over {timeout:.0f}s")
            try:
                msg = await next_message(sub, min(remaining, _IDLE_CHECK))
            except (nats.errors.TimeoutError, TimeoutError):
                if not await _holds_messages(bus, stream):
                    return out  # everything expired or was purged since the first look
                continue
            key = msg.subject[len(prefix):]
            if _removed(msg.headers) or not msg.data:
                out.pop(key, None)
            else:
                out[key] = KvEntry(msg.data, msg.metadata.sequence.stream)
            if msg.metadata.num_pending == 0:
                return out
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


_IDLE_CHECK = 1.0  # seconds without a message after which the bucket is looked at again


async def _holds_messages(bus: Bus, stream: str) -> bool:
    return bool((await bus.js.stream_info(stream)).state.messages)


def _removed(headers: dict[str, str] | None) -> bool:
    """A delete or purge marker, written by a client or placed by the server on expiry."""
    if not headers:
        return False
    return (headers.get("KV-Operation") in ("DEL", "PURGE")
            or "Nats-Marker-Reason" in headers)


async def items(bus: Bus, bucket: str) -> dict[str, bytes]:
    """Every live key and its value (deleted and expired keys left out)."""
    return {key: entry.value for key, entry in (await entries(bus, bucket)).items()}
