"""/api/v1/search: hybrid search (vector and full text, fused by rank) over the caller's
own documents, or over one of their assistants' knowledge base. Also the edge's one door
to the knowledge base (a document's chunks), which lives in LanceDB under the data dir."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

from starlette.responses import Response

from edge.api.endpoint import Call, Endpoint, QueryParam, json_response
from edge.api.models import ID_PATTERN, SearchHit, SearchResults
from edge.errors import ApiError, not_found
from edge.services import Services

MAX_QUERY = 1000
DEFAULT_HITS = 5
MAX_HITS = 50


def _import_knowledge() -> ModuleType:
    # Imported here rather than at the top: LanceDB and the embedding model take seconds to load,
    # and the edge starts serving without them.
    from projections.knowledge import search

    return search


async def _knowledge() -> ModuleType:
    """The knowledge base's read side (projections.knowledge.search), imported off the event
    loop the first time so the edge keeps serving meanwhile."""
    return await asyncio.to_thread(_import_knowledge)


async def chunks(services: Services, document_id: str, owner_id: str | None) -> list[dict[str, Any]]:
    """A document's chunks in order (document_id, chunk_index, heading, text); only the
    owner's, whatever the caller checked before."""
    knowledge = await _knowledge()
    return await knowledge.document_chunks(document_id, owner_id=owner_id, data_dir=services.data_dir)


async def hits(services: Services, query: str, owner_id: str | None, document_ids: list[str] | None,
               limit: int) -> list[SearchHit]:
    knowledge = await _knowledge()
    found = await knowledge.search(query, owner_id=owner_id, document_ids=document_ids,
                                   limit=limit, data_dir=services.data_dir,
                                   embed_threads=services.config.knowledge.embed_threads)
    return [SearchHit(document_id=h.document_id, title=h.title, chunk_index=h.chunk_index,
                      heading=h.heading, text=h.text, score=float(h.score)) for h in found]


def _limit(call: Call) -> int:
    raw = call.query_param("limit")
    try:
        limit = DEFAULT_HITS if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_HITS:
        raise ApiError(422, "validation_failed", f"limit must be an integer from 1 to {MAX_HITS}",
                       {"at": "limit"})
    return limit


async def search_documents(call: Call) -> Response:
    query = (call.query_param("q") or "").strip()
    if not query or len(query) > MAX_QUERY:
        raise ApiError(422, "validation_failed", f"q must be 1-{MAX_QUERY} characters", {"at": "q"})
    limit = _limit(call)
    document_ids: list[str] | None = None
    assistant_id = call.query_param("assistant_id")
    if assistant_id is not None:
        rows = await call.services.query("assistant", assistant_id=assistant_id, owner_id=call.user_id)
        if not rows:
            raise not_found("assistant", assistant_id)
        document_ids = list(rows[0]["documents"] or [])
        if not document_ids:  # an assistant without a knowledge base finds nothing
            return json_response(SearchResults(query=query, hits=[]))
    found = await hits(call.services, query, call.user_id, document_ids, limit)
    return json_response(SearchResults(query=query, hits=found))


ENDPOINTS = (
    Endpoint("GET", "/api/v1/search", search_documents,
             "Search your documents (or one assistant's) for the passages that answer a question",
             "documents", answer=SearchResults, errors=(404,), query=(
                 QueryParam("q", "the question or keywords",
                            {"type": "string", "minLength": 1, "maxLength": MAX_QUERY, "pattern": r"\S"},
                            required=True),
                 QueryParam("assistant_id", "only that assistant's documents",
                            {"type": "string", "pattern": ID_PATTERN}),
                 QueryParam("limit", f"passages to return, 1-{MAX_HITS}",
                            {"type": "integer", "minimum": 1, "maximum": MAX_HITS, "default": DEFAULT_HITS}),
             )),
)
