"""Read models folded a batch at a time: DuckDB costs about a millisecond per statement,
so a statement per event caps a projection near a thousand events a second, far less on a
busy machine. A `Folded` projection buffers the batch's events in apply(), and in flush()
reads the rows they touch in one statement, folds the events into them in Python (in log
order), and writes them back in one more."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import duckdb
import pyarrow as pa

from bus.log import Entry
from projections.base import Projection
from schemas import Event

Row = dict[str, Any]


# Arrow types of the DuckDB column types the read models use.
ARROW_TYPES = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(),
               "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}


def upsert(db: duckdb.DuckDBPyConnection, table: str, columns: tuple[tuple[str, str], ...],
           rows: Iterable[Row], *, replace: bool = True, key: str | None = None) -> None:
    """Write whole rows by primary key: a row replaces the stored one (with `replace=False`
    the stored one is kept). Naming the `key` column replaces with a DELETE and an INSERT,
    cheaper in DuckDB than INSERT OR REPLACE.

    The rows go in as one Arrow table: binding them as list parameters costs several times
    more per row."""
    rows = list(rows)
    if not rows:
        return
    batch = pa.table({name: pa.array([row[name] for row in rows], ARROW_TYPES[kind])
                      for name, kind in columns})
    names = ", ".join(name for name, _ in columns)
    conflict = "OR REPLACE " if replace else "OR IGNORE "
    db.register("_upsert", batch)
    try:
        if replace and key is not None:
            db.execute(f'DELETE FROM "{table}" WHERE "{key}" IN (SELECT "{key}" FROM _upsert)')
            conflict = ""
        db.execute(f'INSERT {conflict}INTO "{table}" ({names}) SELECT {names} FROM _upsert')
    finally:
        db.unregister("_upsert")


def fetch(db: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[Row]:
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description or []]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


class Folded(Projection):
    table: ClassVar[str]
    key: ClassVar[str]
    columns: ClassVar[tuple[tuple[str, str], ...]]  # (name, DuckDB type), the table's order

    def __init__(self) -> None:
        self._pending: list[tuple[Event, Entry]] = []

    def wants(self, event: Event) -> bool:
        return True

    def apply(self, db: duckdb.DuckDBPyConnection, event: Event, entry: Entry) -> None:
        if self.wants(event):
            self._pending.append((event, entry))

    def reset(self) -> None:
        self._pending = []

    def flush(self, db: duckdb.DuckDBPyConnection) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        rows = {row[self.key]: row for row in self.load(db, pending)}
        touched: set[str] = set()
        for event, entry in pending:
            touched |= self.fold(rows, event, entry)
        upsert(db, self.table, self.columns, (rows[k] for k in sorted(touched)), key=self.key)

    def load(self, db: duckdb.DuckDBPyConnection, pending: list[tuple[Event, Entry]]) -> list[Row]:
        """The stored rows the batch may change."""
        raise NotImplementedError

    def fold(self, rows: dict[str, Row], event: Event, entry: Entry) -> set[str]:
        """Apply one event to the rows (adding new ones); the keys it changed."""
        raise NotImplementedError

    def blank(self, **values: Any) -> Row:
        return {name: None for name, _ in self.columns} | values
