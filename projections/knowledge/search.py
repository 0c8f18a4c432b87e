"""The knowledge base's read side: hybrid search over the chunk table (and a document's
chunks in order). Hybrid search: vector top-k (multilingual-e5 cosine) and full-text
top-k (LanceDB's BM25 index) fused by reciprocal rank fusion. A table made with another
embedding model (before its rebuild) is searched by full text alone: its vectors cannot
be compared with this model's.

Always scoped to one owner: chunks of other users are filtered out inside LanceDB
(prefilter), before ranking, and `document_ids` narrows further to an assistant's
knowledge base. Safe to call from any process (the edge, the tools actor): the table is
re-read at its latest version on every query.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np

from projections.knowledge.embed import embedder
from projections.knowledge.query import Hit as Hit  # where it was first defined
from projections.knowledge.store import FTS_COLUMN, ChunkStore, quote, store, terms

log = logging.getLogger("vagent.knowledge")

RRF_K = 60  # the usual constant: rank 1 scores 1/61
CANDIDATES = 20  # per retriever, at least
COLUMNS = ["document_id", "owner_id", "title", "chunk_index", "heading", "text"]
MAX_QUERY = 1000  # characters of the query used
# A scope smaller than this is scanned exactly even where the table has a vector index: a
# selective filter leaves too few rows in the index's probed partitions (LanceDB's advice is
# to bypass the index then), and a flat scan of that many rows is fast anyway.
EXACT_BELOW = 20_000
NPROBES = 20  # IVF partitions searched
REFINE = 4  # candidates re-ranked with their full vectors, per result


def scope(owner_id: str | None, document_ids: list[str] | None) -> str:
    """The LanceDB filter: one owner (None: documents without an owner, the system's),
    and when given only these documents."""
    where = f"owner_id = {quote(owner_id or '')}"
    if document_ids is not None:
        where += f" AND document_id IN ({', '.join(quote(d) for d in document_ids)})"
    return where


async def search(query: str, *, owner_id: str | None, data_dir: Path,
                 document_ids: list[str] | None = None, limit: int = 5,
                 embed_threads: int = 0) -> list[Hit]:
    """The best `limit` chunks for `query` among `owner_id`'s documents (only
    `document_ids` when given; an empty list finds nothing). `embed_threads`: the process's
    `[knowledge] embed_threads`."""
    query = " ".join(query.split())[:MAX_QUERY]
    if not query or limit <= 0 or document_ids == []:
        return []
    return await asyncio.to_thread(search_sync, query, owner_id=owner_id,
                                   document_ids=document_ids, limit=limit, data_dir=data_dir,
                                   embed_threads=embed_threads)


def search_sync(query: str, *, owner_id: str | None, data_dir: Path,
                document_ids: list[str] | None = None, limit: int = 5, exact: bool = False,
                embed_threads: int = 0) -> list[Hit]:
    """`search` in this thread; `exact` scans every vector of the scope even where the
    approximate index would be used (what the benchmark measures the index against)."""
    query = " ".join(query.split())[:MAX_QUERY]
    if not query or limit <= 0 or document_ids == []:
        return []
    chunks = store(data_dir)
    table = chunks.table()
    if table is None:
        return []
    where = scope(owner_id, document_ids)
    k = max(CANDIDATES, limit * 4)
    nearest: list[dict[str, Any]] = []
    if chunks.current():
        vector = embedder(embed_threads).embed_query(query)
        nearest = nearest_query(chunks, table, vector, where, k, exact=exact).to_list()
    else:
        log.warning("the knowledge base was made with another embedding model: full-text "
                    "search only until it is rebuilt (`vagent docs reindex`)")
    return fuse([nearest, _fts(table, query, where, k)], limit)


async def document_chunks(document_id: str, *, owner_id: str | None,
                          data_dir: Path) -> list[dict[str, Any]]:
    """A document's chunks in order (document_id, owner_id, title, chunk_index, heading,
    text); only `owner_id`'s, whatever the caller checked before."""
    found = await asyncio.to_thread(store(data_dir).document_chunks, document_id)
    return [c for c in found if c["owner_id"] == (owner_id or "")]


def nearest_query(chunks: ChunkStore, table: Any, vector: np.ndarray, where: str, k: int, *,
                  exact: bool = False) -> Any:
    """The vector half of the search: through the approximate index for a large scope,
    else an exact scan of the scope's rows."""
    nearest = (table.search(vector, vector_column_name="vector").distance_type("cosine")
               .where(where, prefilter=True).select([*COLUMNS, "_distance"]).limit(k))
    if not exact and chunks.has_vector_index() and table.count_rows(where) >= EXACT_BELOW:
        return nearest.nprobes(NPROBES).refine_factor(REFINE)
    return nearest.bypass_vector_index()


def _fts(table: Any, query: str, where: str, k: int) -> list[dict[str, Any]]:
    try:
        return (table.search(terms(query), query_type="fts", fts_columns=FTS_COLUMN)
                .where(where, prefilter=True).select([*COLUMNS, "_score"]).limit(k).to_list())
    except Exception as exc:  # no full-text index yet (a table being created): vectors alone
        log.debug("full-text search unavailable: %r", exc)
        return []


def fuse(ranked_lists: list[list[dict[str, Any]]], limit: int) -> list[Hit]:
    scores: dict[tuple[str, int], float] = {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for ranked in ranked_lists:
        for rank, row in enumerate(ranked, start=1):
            key = (row["document_id"], row["chunk_index"])
            scores[key] = scores.get(key, 0.0) + 1.0 / (RRF_K + rank)
            rows.setdefault(key, row)
    best = sorted(scores, key=lambda key: (-scores[key], key))[:limit]
    return [Hit(document_id=rows[key]["document_id"], title=rows[key]["title"] or "",
                chunk_index=rows[key]["chunk_index"], text=rows[key]["text"] or "",
                score=round(scores[key], 6), heading=rows[key]["heading"] or None)
            for key in best]
