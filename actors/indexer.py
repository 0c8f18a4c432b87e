"""The indexer actor: `document.uploaded` → the document's chunks in LanceDB and
`document.indexed` (with the chunk count), or `document.failed` with a reason;
`document.deleted` → its chunks removed.

The file comes from Object Store bucket `docs`; it is parsed by type (txt, md, html, pdf),
cleaned, chunked by structure, embedded offline (MiniLM, in a thread, batched) and written
to `<data dir>/lance`. Idempotent: the document's chunks are replaced, never appended to,
so a redelivered upload leaves the same rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import ClassVar

from actors.base import Actor, Context
from bus.blobs import get_document
from bus.config import data_dir
from bus.log import load
from domain.doctext import MAX_CHUNKS, max_chunks, min_chunks, plain_text_chars
from projections.knowledge.chunk import chunk
from projections.knowledge.embed import embedder
from projections.knowledge.parse import PLAIN, ParseError, media_type, parse
from projections.knowledge.store import ChunkStore, Row, store
from schemas import DocumentDeleted, DocumentFailed, DocumentIndexed, DocumentUploaded, Event

log = logging.getLogger("vagent.indexer")

def embedding_text(title: str, heading: str, text: str) -> str:
    """What is embedded for a chunk: its text in the context of its document and section."""
    context = " — ".join(part for part in (title, heading) if part)
    return f"{context}\n{text}" if context else text


def index_document(chunks: ChunkStore, data: bytes, *, document_id: str, owner_id: str | None,
                   title: str, content_type: str | None, filename: str | None = None,
                   max_chunks: int = MAX_CHUNKS) -> int:
    """Parse, chunk, embed and store one document (replacing its earlier chunks); the number
    of chunks. ParseError when it cannot be indexed, with the reason.

    A document that cannot fit in `max_chunks` is refused as early as its size tells: a
    plain text before it is parsed, any other once parsed, before it is chunked."""
    if media_type(content_type, filename) == PLAIN:
        chars = plain_text_chars(data)
        if chars is not None and min_chunks(chars) > max_chunks:
            raise ParseError(too_long(min_chunks(chars), max_chunks))
    try:
        blocks = parse(data, content_type, filename)
    except ParseError:
        raise
    except Exception as exc:  # a parser bug on a strange file: say so, do not retry forever
        log.warning("parser failed", extra={"document_id": document_id}, exc_info=exc)
        raise ParseError(f"cannot read the file: {type(exc).__name__}: {exc}"[:300]) from None
    body = sum(len(b.text) for b in blocks if not b.level)  # headings only name sections
    if min_chunks(body) > max_chunks:
        raise ParseError(too_long(min_chunks(body), max_chunks))
    pieces = chunk(blocks)
    if not pieces:
        raise ParseError("no text found in the document")
    if len(pieces) > max_chunks:
        raise ParseError(f"too long: {len(pieces)} chunks, the limit is {max_chunks}")
    rows = [Row(document_id, owner_id or "", title, c.index, c.heading, c.text) for c in pieces]
    vectors = embedder().embed([embedding_text(title, c.heading, c.text) for c in pieces])
    return chunks.replace_document(rows, vectors, document_id=document_id)


def too_long(at_least: int, limit: int) -> str:
    return f"too long: at least {at_least} chunks, the limit is {limit}"


class Indexer(Actor):
    name: ClassVar[str] = "indexer"
    consumes: ClassVar[tuple[str, ...]] = ("document.uploaded", "document.deleted")
    emits: ClassVar[frozenset[str]] = frozenset({"document.indexed", "document.failed"})
    aggregate: ClassVar[str] = "doc"
    concurrency: ClassVar[int] = 2  # embedding is CPU-bound: more would only share the cores
    ack_wait: ClassVar[float] = 60.0

    data: Path
    chunks: ChunkStore

    async def setup(self) -> None:
        self.data = data_dir()
        self.chunks = store(self.data)
        self.max_chunks = max_chunks()
        await asyncio.to_thread(embedder)  # load the model before the first document

    async def handle(self, event: Event, ctx: Context) -> None:
        if isinstance(event, DocumentUploaded):
            await self._index(event, ctx)
        elif isinstance(event, DocumentDeleted):
            await asyncio.to_thread(self.chunks.delete_document, event.document_id)
            log.info("document removed", extra={"document_id": event.document_id})

    async def _index(self, event: DocumentUploaded, ctx: Context) -> None:
        entries, _ = await load(self.bus, "doc", event.document_id)
        later = [e.event for e in entries if e.seq > ctx.delivery.seq]
        if any(isinstance(e, DocumentDeleted | DocumentUploaded) for e in later):
            return  # deleted or replaced since: indexing this version would resurrect it
        started = time.perf_counter()
        try:
            data = await get_document(self.bus, event.object_name or event.document_id)
        except Exception as exc:  # the object is gone (deleted with its document) or never came
            if type(exc).__name__.endswith("NotFoundError"):
                await self._fail(ctx, event, "the uploaded file is not in the docs bucket")
                return
            raise  # NATS trouble: try again
        try:
            written = await asyncio.to_thread(
                index_document, self.chunks, data, document_id=event.document_id,
                owner_id=event.owner_id, title=event.title or event.filename or event.document_id,
                content_type=event.content_type, filename=event.filename,
                max_chunks=self.max_chunks)
        except ParseError as exc:
            await self._fail(ctx, event, str(exc))
            return
        await ctx.emit(DocumentIndexed(document_id=event.document_id, chunks=written))
        log.info("document indexed", extra={
            "document_id": event.document_id, "chunks": written, "bytes": len(data),
            "ms": round((time.perf_counter() - started) * 1000)})

    async def _fail(self, ctx: Context, event: DocumentUploaded, reason: str) -> None:
        # Chunks of an earlier upload under this id must not outlive a failed re-upload.
        await asyncio.to_thread(self.chunks.delete_document, event.document_id)
        await ctx.emit(DocumentFailed(document_id=event.document_id, reason=reason))
        log.info("document failed", extra={"document_id": event.document_id, "reason": reason})
