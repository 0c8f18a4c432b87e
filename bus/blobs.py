"""Blobs in Object Store buckets (declared in bus/streams.py): each utterance's audio and
each photo a user sent, referenced from the events by a BlobRef, and uploaded documents
(bucket `docs`)."""

from __future__ import annotations

from typing import BinaryIO

import nats.js.errors

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


IMAGES_BUCKET = "images"


async def put_image(bus: Bus, name: str, data: bytes, image_format: str) -> BlobRef:
    """Store a photo (`image_format`: jpeg, png or webp) under `name`."""
    store = await bus.js.object_store(IMAGES_BUCKET)
    await store.put(name, data)
    return BlobRef(bucket=IMAGES_BUCKET, name=name, format=image_format, sample_rate=0)


DOCS_BUCKET = "docs"


async def put_document(bus: Bus, name: str, data: bytes | BinaryIO) -> int:
    """Store an uploaded document's bytes (or a readable binary file) under `name` in
    bucket `docs`; its size."""
    store = await bus.js.object_store(DOCS_BUCKET)
    info = await store.put(name, data)  # type: ignore[arg-type]  # nats-py names BufferedIOBase but only calls read()
    return info.size or 0


async def get_document(bus: Bus, name: str) -> bytes:
    """A stored document's bytes (NotFoundError from nats if there is none)."""
    store = await bus.js.object_store(DOCS_BUCKET)
    result = await store.get(name)
    return result.data or b""


async def delete_document(bus: Bus, name: str) -> None:
    """Remove a stored document; nothing happens if there is none."""
    store = await bus.js.object_store(DOCS_BUCKET)
    try:
        await store.delete(name)
    except nats.js.errors.NotFoundError:
        pass
