"""Rebuild the knowledge base's chunks from the log: `vagent docs reindex`.

The chunks in LanceDB are derived data, like the DuckDB read models: the DOCS stream says
which documents exist (uploaded and not deleted since) and Object Store bucket `docs`
keeps their files, so the chunk table can be made again from nothing — after `<data
dir>/lance` was lost, or to re-embed every document with a changed chunker or model.

Each live document is indexed again (its chunks replaced, as a redelivered upload would),
chunks of documents the log does not hold are removed, and where the outcome differs from
the log's (another chunk count, or a failure turned success) the new outcome is appended,
so the `documents` read model keeps telling the truth.

A table made with another embedding model or tokenizer (an upgrade changed them) is
emptied first, so that no row of the old model is left to compare with the new one's
queries; the rebuild is recorded beside the table only once it is complete, so one that
was interrupted is done again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from bus.admin import stream_state
from bus.blobs import get_document
from bus.client import Bus
from bus.log import read
from bus.subjects import aggregate_events
from projections.knowledge.index import index_document
from projections.knowledge.parse import ParseError
from projections.knowledge.store import ChunkStore, quote
from schemas import DocumentDeleted, DocumentFailed, DocumentIndexed, DocumentUploaded, Event

STREAM, SUBJECTS = "DOCS", aggregate_events("doc")


@dataclass
class Document:
    upload: DocumentUploaded
    outcome: DocumentIndexed | DocumentFailed | None = None


@dataclass
class Reindexed:
    """What a reindex did, per document id."""

    indexed: dict[str, int] = field(default_factory=dict)  # chunks written
    failed: dict[str, str] = field(default_factory=dict)  # the reason
    missing: list[str] = field(default_factory=list)  # the file is not in the bucket
    removed: int = 0  # chunks of documents the log does not hold
    recorded: list[str] = field(default_factory=list)  # documents whose new outcome was appended
    model_changed: bool = False  # the table was made with another model: emptied first

    def as_json(self) -> dict[str, object]:
        return asdict(self)


async def live_documents(bus: Bus) -> dict[str, Document]:
    """The documents the log holds now: uploaded and not deleted since, with their last
    indexing outcome."""
    stream = await stream_state(bus, STREAM)
    documents: dict[str, Document] = {}
    if stream.messages == 0:
        return documents
    async for entry in read(bus, STREAM, SUBJECTS, until_seq=stream.last_seq):
        event: Event | None = entry.event
        match event:
            case DocumentUploaded():
                documents[event.document_id] = Document(event)
            case DocumentDeleted():
                documents.pop(event.document_id, None)
            case DocumentIndexed() | DocumentFailed() if event.document_id in documents:
                documents[event.document_id].outcome = event
    return documents


async def reindex(bus: Bus, chunks: ChunkStore, *, max_chunks: int, embed_threads: int = 0,
                  progress: Callable[[str, int, int], None] | None = None) -> Reindexed:
    """Make the chunk table match the log (see the module's text)."""
    documents = await live_documents(bus)
    done = Reindexed()
    if not await asyncio.to_thread(chunks.current):
        await asyncio.to_thread(chunks.clear)
        done.model_changed = True
    for n, (document_id, doc) in enumerate(documents.items(), 1):
        upload = doc.upload
        try:
            data = await get_document(bus, upload.object_name or document_id)
        except Exception as exc:
            if not type(exc).__name__.endswith("NotFoundError"):
                raise
            done.missing.append(document_id)
            continue
        outcome: DocumentIndexed | DocumentFailed
        try:
            written = await asyncio.to_thread(
                index_document, chunks, data, document_id=document_id, owner_id=upload.owner_id,
                title=upload.title or upload.filename or document_id, content_type=upload.content_type,
                filename=upload.filename, max_chunks=max_chunks, embed_threads=embed_threads)
            done.indexed[document_id] = written
            outcome = DocumentIndexed(document_id=document_id, chunks=written)
        except ParseError as exc:
            await asyncio.to_thread(chunks.delete_document, document_id)
            done.failed[document_id] = str(exc)
            outcome = DocumentFailed(document_id=document_id, reason=str(exc))
        if _changed(doc.outcome, outcome):
            outcome.causation_id = upload.id
            await bus.publish(outcome)
            done.recorded.append(document_id)
        if progress is not None:
            progress(upload.title or upload.filename or document_id, n, len(documents))
    # Documents uploaded while this ran were indexed by the indexer: kept too.
    keep = set(documents) | set(await live_documents(bus))
    done.removed = await asyncio.to_thread(_remove_others, chunks, keep)
    await asyncio.to_thread(chunks.optimize)
    await asyncio.to_thread(chunks.mark_layout)
    return done


def _changed(before: DocumentIndexed | DocumentFailed | None, now: DocumentIndexed | DocumentFailed) -> bool:
    match before, now:
        case DocumentIndexed(), DocumentIndexed():
            return before.chunks != now.chunks
        case DocumentFailed(), DocumentFailed():
            return False  # the same document failing again (the reason may be worded anew)
        case _:
            return True


def _remove_others(chunks: ChunkStore, keep: set[str]) -> int:
    """Delete the chunks of every document not in `keep`; how many went."""
    table = chunks.table()
    if table is None:
        return 0
    stored = {row["document_id"] for row in
              table.search().select(["document_id"]).limit(10_000_000).to_list()}
    gone = sorted(stored - keep)
    if not gone:
        return 0
    where = f"document_id IN ({', '.join(quote(d) for d in gone)})"
    count = chunks.count(where)
    for document_id in gone:
        chunks.delete_document(document_id)
    return count
