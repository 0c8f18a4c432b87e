"""Blobs in Object Store buckets (declared in bus/streams.py): each utterance's audio,
referenced from the events by a BlobRef."""

from __future__ import annotations

from bus.client import Bus
from schemas import BlobRef

BUCKET = "audio"
RATE = 16000


async def put_pcm(bus: Bus, name: str, pcm: bytes, *, sample_rate: int = RATE) -> BlobRef:
    """Store 16-bit mono PCM under `name` (replaced if it exists: re-processing is idempotent)."""
    store = await bus.js.object_store(BUCKET)
    await store.put(name, pcm)
    return BlobRef(bucket=BUCKET, name=name, format="pcm16", sample_rate=sample_rate,
                   duration_ms=len(pcm) * 1000 // (2 * sample_rate))


async def get_blob(bus: Bus, ref: BlobRef) -> bytes:
    store = await bus.js.object_store(ref.bucket)
    result = await store.get(ref.name)
    return result.data or b""
