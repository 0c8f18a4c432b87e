"""The chunk table in LanceDB (`<data dir>/lance`, table `chunks`): one row per chunk with
its document, owner, title, heading, text and 384-dim vector; a full-text index on
`search_text` (title, heading and text) and scalar indexes for the filters.

Chinese and Japanese are written without spaces between words, which the full-text index
needs: their runs of characters are indexed (and asked) as overlapping pairs of characters,
the way search engines index CJK text without a dictionary, so a word of two characters or
more matches wherever it occurs, whichever way a segmenter would have cut the sentence.
English is indexed as before (words, stemmed, without stop words). A file beside the table
names the embedding model and indexing its rows were made with: rows of another model are
not comparable with this one's queries, so such a table is rebuilt from the log
(`projections.knowledge.reindex`).

Writes come from the indexer; reads (search) from any process: a connection with a
zero read-consistency interval sees every commit made by another process.
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, BTree, IvfHnswSq

from projections.knowledge.embed import DIMS, MODEL_ID

log = logging.getLogger("vagent.knowledge")

TABLE = "chunks"
FTS_COLUMN = "search_text"
# Rows written since the indexes were last brought up to date are still searched (flat);
# past this many, the writer folds them into the indexes.
REINDEX_AFTER = 2000
# Below this many rows an exact (flat) vector scan is fast enough and always right; from it
# on the table gets an approximate index (IVF partitions, HNSW within each, 8-bit scalar
# quantisation), which searches use for scopes this large (see search.EXACT_BELOW).
VECTOR_INDEX_AT = 50_000
VECTOR_INDEX = "vector_idx"
# What the rows and indexes were made with; written beside the table.
LAYOUT = f"vectors: {MODEL_ID}; words: simple, CJK bigrams"
LAYOUT_FILE = f"{TABLE}.layout"

SCHEMA = pa.schema([
    pa.field("document_id", pa.string(), nullable=False),
    pa.field("owner_id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("chunk_index", pa.int32(), nullable=False),
    pa.field("heading", pa.string()),
    pa.field("text", pa.string()),
    pa.field(FTS_COLUMN, pa.string()),
    pa.field("vector", pa.list_(pa.float32(), DIMS)),
])


def lance_dir(data_dir: Path) -> Path:
    return data_dir / "lance"


def quote(value: str) -> str:
    """A SQL string literal for LanceDB filters."""
    return "'" + value.replace("'", "''") + "'"


def search_text(title: str, heading: str, text: str) -> str:
    return terms("\n".join(part for part in (title, heading, text) if part))


_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def terms(text: str) -> str:
    """`text` as the full-text index takes it (a chunk, or a query): each run of Chinese or
    Japanese characters as its overlapping character pairs ("更换滤网" → "更换 换滤 滤网"),
    anything else as it is."""
    def pairs(run: re.Match[str]) -> str:
        chars = run.group()
        return f" {chars if len(chars) == 1 else ' '.join(map(str.__add__, chars, chars[1:]))} "
    return _CJK_RUN.sub(pairs, text)


@dataclass(frozen=True, slots=True)
class Row:
    document_id: str
    owner_id: str
    title: str
    chunk_index: int
    heading: str
    text: str


def arrow_rows(rows: Sequence[Row], vectors: np.ndarray) -> pa.Table:
    assert len(rows) == len(vectors)
    return pa.table({
        "document_id": pa.array([r.document_id for r in rows], pa.string()),
        "owner_id": pa.array([r.owner_id for r in rows], pa.string()),
        "title": pa.array([r.title for r in rows], pa.string()),
        "chunk_index": pa.array([r.chunk_index for r in rows], pa.int32()),
        "heading": pa.array([r.heading for r in rows], pa.string()),
        "text": pa.array([r.text for r in rows], pa.string()),
        FTS_COLUMN: pa.array([search_text(r.title, r.heading, r.text) for r in rows], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel()), DIMS),
    }, schema=SCHEMA)


class ChunkStore:
    """Thread-safe (LanceDB tables are); writes are serialised by a lock within a process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(str(path), read_consistency_interval=datetime.timedelta(0))
        self._table: Any = None
        self._write = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path) -> ChunkStore:
        return cls(lance_dir(data_dir))

    def table(self, create: bool = False) -> Any:
        """The chunk table, or None when nothing was ever indexed (and not `create`)."""
        if self._table is None:
            try:
                self._table = self.db.open_table(TABLE)
            except (FileNotFoundError, ValueError):
                if not create:
                    return None
                self._table = self.db.create_table(TABLE, schema=SCHEMA, exist_ok=True)
                if self._table.count_rows() == 0:  # ours, not another writer's just made
                    self.mark_layout()
        return self._table

    # --- what the rows were made with -------------------------------------------------

    def layout(self) -> str | None:
        """The model and tokenizer the table's rows were made with; None when not recorded
        (a table of an earlier version: made with another model)."""
        try:
            return (self.path / LAYOUT_FILE).read_text().strip()
        except FileNotFoundError:
            return None

    def current(self) -> bool:
        """Whether the table (if any) was made with this version's model and tokenizer,
        so that its vectors can be compared with a query's."""
        return self.table() is None or self.layout() == LAYOUT

    def mark_layout(self) -> None:
        """Record that every row is now made with this version's model and tokenizer."""
        path = self.path / LAYOUT_FILE
        path.with_suffix(".tmp").write_text(LAYOUT + "\n")
        path.with_suffix(".tmp").replace(path)

    def clear(self) -> None:
        """Every row and index gone, the table kept (readers in other processes hold it
        open): the start of a rebuild. The indexes are made anew with the next rows."""
        with self._write:
            table = self.table()
            if table is None:
                return
            table.delete("true")
            for index in table.list_indices():
                table.drop_index(index.name)

    # --- writing ----------------------------------------------------------------------

    def replace_document(self, rows: Sequence[Row], vectors: np.ndarray, *,
                         document_id: str) -> int:
        """The document's chunks become exactly `rows` (a redelivery writes the same again).
        Returns the number of rows written."""
        assert len(rows) == len(vectors)
        with self._write:
            table = self.table(create=True)
            table.delete(f"document_id = {quote(document_id)}")
            if rows:
                table.add(arrow_rows(rows, vectors))
            self._index(table)
        return len(rows)

    def append(self, rows: Sequence[Row], vectors: np.ndarray) -> None:
        """Bulk load (the benchmark): rows added as they are, indexes left to `optimize`."""
        with self._write:
            self.table(create=True).add(arrow_rows(rows, vectors))

    def delete_document(self, document_id: str) -> None:
        with self._write:
            table = self.table()
            if table is not None:
                table.delete(f"document_id = {quote(document_id)}")

    def _index(self, table: Any) -> None:
        """Full-text and filter indexes: created with the first rows, then kept up to date
        (new rows are searched without an index until REINDEX_AFTER of them piled up); the
        vector index once the table reaches VECTOR_INDEX_AT rows."""
        indices = {i.name for i in table.list_indices()}
        created = False
        if f"{FTS_COLUMN}_idx" not in indices:
            table.create_index(FTS_COLUMN, config=FTS(with_position=False), replace=True)
            for column in ("owner_id", "document_id"):
                table.create_index(column, config=BTree(), replace=True)
            created = True
        if VECTOR_INDEX not in indices and table.count_rows() >= VECTOR_INDEX_AT:
            self._vector_index(table)
            created = True
        if created:
            return
        stale = max((self._unindexed(table, name) for name in indices), default=0)
        if stale >= REINDEX_AFTER:
            table.optimize()

    @staticmethod
    def _vector_index(table: Any) -> None:
        started = time.perf_counter()
        table.create_index("vector", config=IvfHnswSq(distance_type="cosine"), name=VECTOR_INDEX,
                           replace=True)
        log.info("vector index built", extra={"rows": table.count_rows(),
                                              "ms": round((time.perf_counter() - started) * 1000)})

    @staticmethod
    def _unindexed(table: Any, name: str) -> int:
        try:
            return table.index_stats(name).num_unindexed_rows
        except Exception:  # an index being replaced by another writer
            return 0

    def optimize(self) -> None:
        """Create the indexes, or fold new rows into them, and compact the files."""
        with self._write:
            table = self.table()
            if table is None:
                return
            self._index(table)
            table.optimize()

    # --- reading ----------------------------------------------------------------------

    def has_vector_index(self) -> bool:
        table = self.table()
        return table is not None and VECTOR_INDEX in {i.name for i in table.list_indices()}

    def count(self, where: str | None = None) -> int:
        table = self.table()
        return 0 if table is None else table.count_rows(where)

    def document_chunks(self, document_id: str) -> list[dict[str, Any]]:
        table = self.table()
        if table is None:
            return []
        rows = (table.search().where(f"document_id = {quote(document_id)}")
                .select(["document_id", "owner_id", "title", "chunk_index", "heading", "text"])
                .limit(100_000).to_list())
        return sorted(rows, key=lambda r: r["chunk_index"])


_stores: dict[Path, ChunkStore] = {}
_stores_lock = threading.Lock()


def store(data_dir: Path) -> ChunkStore:
    """One store per LanceDB directory and process."""
    path = lance_dir(data_dir).resolve()
    with _stores_lock:
        if path not in _stores:
            _stores[path] = ChunkStore(path)
        return _stores[path]
