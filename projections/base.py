"""A projection turns events into rows of a read model; the runtime feeds it."""

from __future__ import annotations

from typing import ClassVar

import duckdb

from bus.log import Entry
from schemas import Event


class Projection:
    name: ClassVar[str]
    streams: ClassVar[tuple[str, ...]]  # streams it reads, each from sequence 1
    tables: ClassVar[tuple[str, ...]]  # the tables it owns (compared on rebuild)
    ddl: ClassVar[str]  # CREATE TABLE IF NOT EXISTS … for those tables
    # Raise it whenever the tables or what apply() writes change: a store built by another
    # version drops this projection's tables and rebuilds them from sequence 1.
    version: ClassVar[int] = 1

    def apply(self, db: duckdb.DuckDBPyConnection, event: Event, entry: Entry) -> None:
        """Write the event's effect. Runs inside the transaction that also moves the checkpoint."""
        raise NotImplementedError

    def flush(self, db: duckdb.DuckDBPyConnection) -> None:
        """Write what apply() buffered: called once at the end of each batch, in the same
        transaction, before the checkpoint moves. A projection may fold a batch in memory and
        write it in a few statements (DuckDB costs about a millisecond per statement)."""

    def reset(self) -> None:
        """Forget what apply() buffered: the batch's transaction was rolled back."""

    def queries(self) -> dict[str, str]:
        """Named read queries (SQL with $named parameters) served to the CLI and API."""
        return {}
