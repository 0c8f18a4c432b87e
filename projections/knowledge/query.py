"""A knowledge-base search asked over NATS (`bus.subjects.knowledge_search`).

The tools actor answers it: the process that searches the knowledge base for the
assistants already has the embedding model loaded and reads the LanceDB table the indexer
writes, so a command (`vagent docs search`) asks it instead of opening those files from a
second process. Light on purpose: no LanceDB, no model, just the wire types.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from bus.client import Bus
from bus.errors import BusError
from bus.subjects import knowledge_search

log = logging.getLogger("vagent.knowledge")

# The first search of a tools actor loads the embedding model (seconds on a busy machine).
TIMEOUT = 60.0


class Hit(msgspec.Struct, kw_only=True):
    document_id: str
    title: str
    chunk_index: int
    text: str
    score: float  # reciprocal-rank-fusion score: higher is better (at most 2/61)
    heading: str | None = None


class SearchRequest(msgspec.Struct, kw_only=True):
    """`projections.knowledge.search.search`'s arguments."""

    query: str
    owner_id: str | None = None  # None: the documents nobody owns (the system's)
    document_ids: list[str] | None = None  # only these (an assistant's); [] finds nothing
    limit: int = 5


class SearchAnswer(msgspec.Struct, kw_only=True):
    hits: list[Hit] = msgspec.field(default_factory=list)
    error: str | None = None


class SearchError(Exception):
    """Nobody answered, or the search failed where it ran."""


async def ask(bus: Bus, request: SearchRequest, timeout: float = TIMEOUT) -> list[Hit]:
    try:
        raw = await bus.request(knowledge_search(), msgspec.json.encode(request), timeout=timeout)
    except BusError as exc:
        raise SearchError(f"no knowledge search answered on {bus.url} ({exc}): the tools actor "
                          "searches; start the stack with `vagent up` (or `vagent actor run tools`)"
                          ) from None
    answer = msgspec.json.decode(raw, type=SearchAnswer)
    if answer.error is not None:
        raise SearchError(answer.error)
    return answer.hits


async def answer(raw: bytes, data_dir: Path | None, embed_threads: int = 0) -> bytes:
    """The answer to one request, as the serving process (the tools actor) sends it back."""
    from projections.knowledge.search import search

    try:
        request = msgspec.json.decode(raw, type=SearchRequest)
    except msgspec.DecodeError as exc:
        return msgspec.json.encode(SearchAnswer(error=f"bad search request: {exc}"))
    if data_dir is None:
        return msgspec.json.encode(SearchAnswer(error="this tools actor runs without a data directory"))
    try:
        hits = await search(request.query, owner_id=request.owner_id, data_dir=data_dir,
                            document_ids=request.document_ids, limit=request.limit,
                            embed_threads=embed_threads)
    except Exception as exc:  # the asker gets the reason; this process goes on serving
        log.exception("knowledge search failed")
        return msgspec.json.encode(SearchAnswer(error=f"the search failed: {exc!r}"))
    return msgspec.json.encode(SearchAnswer(hits=hits))
