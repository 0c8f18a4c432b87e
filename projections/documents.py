"""The `documents` read model: each uploaded document, its owner, and how its indexing went
(`uploaded` until the indexer answers, then `indexed` with a chunk count or `failed` with
the reason). A deleted document's row is removed."""

from __future__ import annotations

from typing import ClassVar

import duckdb

from bus.log import Entry
from projections.base import Projection
from schemas import DocumentDeleted, DocumentFailed, DocumentIndexed, DocumentUploaded, Event

COLUMNS = ("document_id, owner_id, title, filename, content_type, size, status, chunks, error, "
           "uploaded_ts, indexed_ts")


class Documents(Projection):
    name: ClassVar[str] = "documents"
    streams: ClassVar[tuple[str, ...]] = ("DOCS",)
    tables: ClassVar[tuple[str, ...]] = ("documents",)
    ddl: ClassVar[str] = """
        CREATE TABLE IF NOT EXISTS documents (
            document_id VARCHAR PRIMARY KEY,
            owner_id VARCHAR,                -- NULL: a document of the system's
            title VARCHAR NOT NULL,
            filename VARCHAR NOT NULL,
            content_type VARCHAR NOT NULL,
            size BIGINT NOT NULL,
            status VARCHAR NOT NULL,         -- uploaded | indexed | failed
            chunks INTEGER NOT NULL,
            error VARCHAR,                   -- why indexing failed
            uploaded_ts BIGINT NOT NULL,
            indexed_ts BIGINT                -- when the indexer answered (indexed or failed)
        )
    """

    def apply(self, db: duckdb.DuckDBPyConnection, event: Event, entry: Entry) -> None:
        match event:
            case DocumentUploaded():
                # A re-upload under the same id starts over.
                db.execute(
                    f"INSERT OR REPLACE INTO documents ({COLUMNS}) VALUES ($did, $owner, $title, "
                    "$filename, $ctype, $size, 'uploaded', 0, NULL, $ts, NULL)",
                    {"did": event.document_id, "owner": event.owner_id, "title": event.title,
                     "filename": event.filename, "ctype": event.content_type, "size": event.size,
                     "ts": event.ts},
                )
            case DocumentIndexed():
                db.execute(
                    "UPDATE documents SET status = 'indexed', chunks = $chunks, error = NULL, "
                    "indexed_ts = $ts WHERE document_id = $did",
                    {"did": event.document_id, "chunks": event.chunks, "ts": event.ts},
                )
            case DocumentFailed():
                db.execute(
                    "UPDATE documents SET status = 'failed', chunks = 0, error = $reason, "
                    "indexed_ts = $ts WHERE document_id = $did",
                    {"did": event.document_id, "reason": event.reason, "ts": event.ts},
                )
            case DocumentDeleted():
                db.execute("DELETE FROM documents WHERE document_id = $did",
                           {"did": event.document_id})

    def queries(self) -> dict[str, str]:
        return {
            # Scoped to their owner, like every list and lookup of the API; a NULL owner
            # lists the system's documents (`vagent docs list` without --user).
            "documents": f"""
                SELECT {COLUMNS} FROM documents
                WHERE owner_id IS NOT DISTINCT FROM $owner_id AND document_id > $after
                ORDER BY document_id LIMIT $limit
            """,
            "document": f"""
                SELECT {COLUMNS} FROM documents
                WHERE document_id = $document_id AND owner_id = $owner_id
            """,
        }
