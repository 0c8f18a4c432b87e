"""/api/v1/documents: the caller's knowledge-base documents. An upload is stored and
recorded at once (202); the indexer parses, chunks and embeds it in the background, and
the document's `status` goes from `uploaded` to `indexed` (or `failed`, with `error`)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from domain.documents import MAX_TITLE, Documents, Quota
from edge.api import search as knowledge
from edge.api.endpoint import Call, Endpoint, Form, FormField, json_response
from edge.api.models import Chunk, ChunkPage, Document, DocumentPage
from edge.api.pages import PAGE_PARAMS, iso, page, page_rows
from edge.errors import not_found
from schemas import DocumentUploaded


def document_body(row: dict[str, Any]) -> Document:
    return Document(document_id=row["document_id"], title=row["title"], filename=row["filename"],
                    content_type=row["content_type"], size=row["size"], status=row["status"],
                    chunks=row["chunks"] or 0, error=row["error"], uploaded_at=iso(row["uploaded_ts"]),
                    indexed_at=iso(row["indexed_ts"]) if row["indexed_ts"] else None)


def uploaded_body(event: DocumentUploaded) -> Document:
    return Document(document_id=event.document_id, title=event.title, filename=event.filename,
                    content_type=event.content_type, size=event.size, status="uploaded", chunks=0,
                    error=None, uploaded_at=iso(event.ts), indexed_at=None)


def documents(call: Call) -> Documents:
    edge = call.services.config.edge
    return Documents(call.services.bus, edge.max_upload_bytes,
                     max_chunks=call.services.config.knowledge.max_chunks,
                     quota=Quota(edge.max_documents_per_user, edge.max_document_bytes_per_user,
                                 lambda owner_id: usage(call, owner_id, edge.max_documents_per_user)))


async def usage(call: Call, owner_id: str, most: int) -> tuple[int, int]:
    """The owner's documents and their bytes, from the read model (caught up with every
    stored event): one page of at most `most + 1` rows says both, since more than `most`
    documents is over the quota anyway."""
    rows = await call.services.query("documents", owner_id=owner_id, after="", limit=most + 1)
    return len(rows), sum(row["size"] for row in rows)


async def own_document(call: Call) -> dict[str, Any]:
    """The document's row if it is the caller's; 404 otherwise (also for someone else's)."""
    document_id = call.params["document_id"]
    rows = await call.services.query("document", document_id=document_id, owner_id=call.user_id)
    if not rows:
        raise not_found("document", document_id)
    return rows[0]


async def upload_document(call: Call) -> Response:
    form: Form = call.body
    upload = form.files["file"]
    event = await documents(call).upload(call.user_id, upload.filename or "", upload.file,
                                         size=upload.size or 0, title=form.fields.get("title"),
                                         content_type=upload.content_type)
    return json_response(uploaded_body(event), 202, {"Location": f"/api/v1/documents/{event.document_id}"})


async def list_documents(call: Call) -> Response:
    items, cursor = await page(call, "documents", "document_id", document_body, owner_id=call.user_id)
    return json_response(DocumentPage(items=items, next_cursor=cursor))


async def get_document(call: Call) -> Response:
    return json_response(document_body(await own_document(call)))


async def list_document_chunks(call: Call) -> Response:
    document = await own_document(call)
    chunks = await knowledge.chunks(call.services, document["document_id"], call.user_id)
    items, cursor = page_rows(call, chunks, "chunk_index",
                              lambda c: Chunk(document_id=c["document_id"], chunk_index=c["chunk_index"],
                                              heading=c["heading"] or None, text=c["text"] or ""))
    return json_response(ChunkPage(items=items, next_cursor=cursor))


async def delete_document(call: Call) -> Response:
    await documents(call).delete(call.user_id, call.params["document_id"])
    return Response(status_code=204)


UPLOAD = (
    FormField("file", "the document: .txt, .md, .html or .pdf (by its name, else its content type)",
              file=True, required=True),
    FormField("title", "how answers cite it (default: the file name)", max_length=MAX_TITLE),
)

ENDPOINTS = (
    Endpoint("POST", "/api/v1/documents", upload_document,
             "Upload a document to your knowledge base (indexed in the background)", "documents",
             status=202, form=UPLOAD, answer=Document, errors=(413, 415, 422)),
    Endpoint("GET", "/api/v1/documents", list_documents, "Your documents, a page at a time", "documents",
             answer=DocumentPage, query=PAGE_PARAMS),
    Endpoint("GET", "/api/v1/documents/{document_id}", get_document,
             "One of your documents and its indexing status", "documents", answer=Document, errors=(404,)),
    Endpoint("GET", "/api/v1/documents/{document_id}/chunks", list_document_chunks,
             "A document's passages as indexed, in order", "documents", answer=ChunkPage,
             query=PAGE_PARAMS, errors=(404,)),
    Endpoint("DELETE", "/api/v1/documents/{document_id}", delete_document,
             "Delete a document (its passages leave the knowledge base)", "documents", status=204,
             errors=(404, 409)),
)
