"""The indexer actor: `document.uploaded` → the document's chunks in LanceDB and
`document.indexed` (with the chunk count), or `document.failed` with a reason;
`document.deleted` → its chunks removed.

The file comes from Object Store bucket `docs`; the knowledge base's pipeline
(projections.knowledge.index: parse by type, chunk by structure, embed offline, in a
thread) writes its chunks to `<data dir>/lance`. Idempotent: the document's chunks are
replaced, never appended to, so a redelivered upload leaves the same rows.

A chunk table made with another embedding model (an upgrade changed it) is rebuilt from
the log when the indexer starts, in the background: new uploads are indexed meanwhile,
and searches find the documents again as they are re-embedded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import ClassVar

from actors.base import Actor, Context
from bus.blobs import get_document
from bus.log import load
from projections.knowledge.embed import embedder
from projections.knowledge.index import index_document
from projections.knowledge.parse import ParseError
from projections.knowledge.reindex import reindex
from projections.knowledge.store import ChunkStore, store
from schemas import DocumentDeleted, DocumentFailed, DocumentIndexed, DocumentUploaded, Event

log = logging.getLogger("vagent.indexer")


class Indexer(Actor):
    name: ClassVar[str] = "indexer"
    consumes: ClassVar[tuple[str, ...]] = ("document.uploaded", "document.deleted")
    emits: ClassVar[frozenset[str]] = frozenset({"document.indexed", "document.failed"})
    aggregate: ClassVar[str] = "doc"
    concurrency: ClassVar[int] = 2  # embedding is CPU-bound: more would only share the cores
    ack_wait: ClassVar[float] = 60.0

    chunks: ChunkStore
    _rebuild: asyncio.Task[None] | None = None  # the rebuild after a change of model

    async def setup(self) -> None:
        if self.data_dir is None:
            raise ValueError("the indexer writes chunks under the data directory: host it with one")
        self.chunks = store(self.data_dir)
        self.knowledge = self.config.knowledge
        # Load the model before the first document.
        await asyncio.to_thread(embedder, self.knowledge.embed_threads)
        if not await asyncio.to_thread(self.chunks.current):
            self._rebuild = asyncio.create_task(self._rebuild_all(), name="indexer:rebuild")

    async def teardown(self) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel()
            await asyncio.gather(self._rebuild, return_exceptions=True)

    async def _rebuild_all(self) -> None:
        log.warning("the knowledge base was made with another embedding model: rebuilding it")
        started = time.perf_counter()
        try:
            done = await reindex(self.bus, self.chunks, max_chunks=self.knowledge.max_chunks,
                                 embed_threads=self.knowledge.embed_threads)
        except Exception as exc:  # `vagent docs reindex` is the way out; the next start retries
            log.error("rebuilding the knowledge base failed", exc_info=exc)
            return
        log.info("knowledge base rebuilt", extra={
            "documents": len(done.indexed), "failed": len(done.failed),
            "missing": len(done.missing), "ms": round((time.perf_counter() - started) * 1000)})

    async def handle(self, event: Event, ctx: Context) -> None:
        if isinstance(event, DocumentUploaded):
            await self._index(event, ctx)
        elif isinstance(event, DocumentDeleted):
            await asyncio.to_thread(self.chunks.delete_document, event.document_id)
            log.info("document removed", extra={"document_id": event.document_id})

    async def _index(self, event: DocumentUploaded, ctx: Context) -> None:
        entries, _ = await load(self.bus, "doc", event.document_id)
        assert ctx.delivery is not None  # handled events are delivered ones
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
                max_chunks=self.knowledge.max_chunks, embed_threads=self.knowledge.embed_threads)
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
