"""Read models folded a batch at a time: DuckDB costs about a millisecond per statement,
so a statement per event caps a projection near a thousand events a second, far less on a
busy machine. A `Folded` projection buffers the batch's events in apply(), and in flush()
reads the rows they touch in one statement, folds the events into them in Python (in log
order), and writes them back in one more."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import duckdb

from bus.log import Entry
from projections.base import Projection
from schemas import Event

Row = dict[str, Any]


def upsert(db: duckdb.DuckDBPyConnection, table: str, columns: tuple[tuple[str, str], ...],
           rows: Iterable[Row], *, replace: bool = True) -> None:
    """Write whole rows (INSERT OR REPLACE by primary key; OR IGNORE with `replace=False`)."""
    rows = list(rows)
    if not rows:
        return
    names = ", ".join(name for name, _ in columns)
    select = ", ".join(f"unnest($c{i}::{kind}[])" for i, (_, kind) in enumerate(columns))
    db.execute(f'INSERT OR {"REPLACE" if replace else "IGNORE"} INTO "{table}" ({names}) SELECT {select}',
               {f"c{i}": [row[name] for row in rows] for i, (name, _) in enumerate(columns)})


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
        upsert(db, self.table, self.columns, (rows[k] for k in sorted(touched)))

    def load(self, db: duckdb.DuckDBPyConnection, pending: list[tuple[Event, Entry]]) -> list[Row]:
        """The stored rows the batch may change."""
        raise NotImplementedError

    def fold(self, rows: dict[str, Row], event: Event, entry: Entry) -> set[str]:
        """Apply one event to the rows (adding new ones); the keys it changed."""
        raise NotImplementedError

    def blank(self, **values: Any) -> Row:
        return {name: None for name, _ in self.columns} | values
