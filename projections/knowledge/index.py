"""Indexing one document: parse → chunk → embed → the document's chunks in the store.

The pipeline behind both the indexer actor (an uploaded document) and `vagent docs
reindex` (every live document again). Idempotent: the document's chunks are replaced,
never appended to, so indexing the same upload twice leaves the same rows.
"""

from __future__ import annotations

import logging

from domain.doctext import min_chunks, plain_text_chars
from projections.knowledge.chunk import chunk
from projections.knowledge.embed import embedder
from projections.knowledge.parse import PLAIN, ParseError, media_type, parse
from projections.knowledge.store import ChunkStore, Row
from settings.config import KnowledgeSettings

log = logging.getLogger("vagent.knowledge")


def embedding_text(title: str, heading: str, text: str) -> str:
    """What is embedded for a chunk: its text in the context of its document and section."""
    context = " — ".join(part for part in (title, heading) if part)
    return f"{context}\n{text}" if context else text


def index_document(chunks: ChunkStore, data: bytes, *, document_id: str, owner_id: str | None,
                   title: str, content_type: str | None, filename: str | None = None,
                   max_chunks: int = KnowledgeSettings().max_chunks, embed_threads: int = 0) -> int:
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
    vectors = embedder(embed_threads).embed([embedding_text(title, c.heading, c.text) for c in pieces])
    return chunks.replace_document(rows, vectors, document_id=document_id)


def too_long(at_least: int, limit: int) -> str:
    return f"too long: at least {at_least} chunks, the limit is {limit}"
