"""Small reads and writes of NATS KV buckets (declared in bus/streams.py)."""

from __future__ import annotations

import nats.js.errors

from bus.client import Bus


async def put(bus: Bus, bucket: str, key: str, value: bytes) -> int:
    kv = await bus.js.key_value(bucket)
    return await kv.put(key, value)


async def get(bus: Bus, bucket: str, key: str) -> bytes | None:
    kv = await bus.js.key_value(bucket)
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value or None


async def delete(bus: Bus, bucket: str, key: str) -> None:
    kv = await bus.js.key_value(bucket)
    await kv.delete(key)


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
