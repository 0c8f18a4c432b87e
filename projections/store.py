"""One DuckDB file with every read model and, in the same transactions, their checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from bus.log import Entry
from projections.base import Projection

CHECKPOINTS = """
    CREATE TABLE IF NOT EXISTS _checkpoints (
        projection VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (projection, stream)
    )
"""


class ReadStore:
    def __init__(self, path: Path, projections: Sequence[Projection], read_only: bool = False) -> None:
        self.path = path
        self.projections = list(projections)
        self.db = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            self.db.execute(CHECKPOINTS)
            for projection in self.projections:
                self.db.execute(projection.ddl)

    def checkpoint(self, projection: str, stream: str) -> int:
        row = self.db.execute(
            "SELECT seq FROM _checkpoints WHERE projection = ? AND stream = ?", [projection, stream]
        ).fetchone()
        return row[0] if row else 0

    def apply(self, projection: Projection, stream: str, entries: Sequence[Entry]) -> int:
        """Apply entries past the checkpoint and move it, all in one transaction.

        An entry at or below the checkpoint was applied before (a redelivery after a
        restart) and is skipped, so nothing is ever applied twice.
        """
        db = self.db
        db.begin()
        try:
            done = self.checkpoint(projection.name, stream)
            applied = 0
            for entry in entries:
                if entry.seq <= done:
                    continue
                if entry.event is not None:  # undecodable bytes: the consumers dead-letter them
                    projection.apply(db, entry.event, entry)
                    applied += 1
                done = entry.seq
            db.execute(
                "INSERT INTO _checkpoints VALUES (?, ?, ?) "
                "ON CONFLICT (projection, stream) DO UPDATE SET seq = excluded.seq",
                [projection.name, stream, done],
            )
            db.commit()
        except BaseException:
            db.rollback()
            raise
        return applied

    def query(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[list[Any]]]:
        cursor = self.db.execute(sql, params or {})
        columns = [d[0] for d in cursor.description or []]
        return columns, [list(row) for row in cursor.fetchall()]

    def table(self, name: str) -> list[tuple[Any, ...]]:
        """Every row of a table in a stable order (for comparing rebuilds)."""
        return self.db.execute(f'SELECT * FROM "{name}" ORDER BY ALL').fetchall()

    def close(self) -> None:
        self.db.close()
