"""One DuckDB file with every read model and, in the same transactions, their checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from bus.log import Entry
from projections.base import Projection

log = logging.getLogger("vagent.projections")

CHECKPOINTS = """
    CREATE TABLE IF NOT EXISTS _checkpoints (
        projection VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (projection, stream)
    )
"""


VERSIONS = """
    CREATE TABLE IF NOT EXISTS _versions (
        projection VARCHAR PRIMARY KEY,
        version INTEGER NOT NULL
    )
"""


class ReadStore:
    def __init__(self, path: Path, projections: Sequence[Projection], read_only: bool = False) -> None:
        self.path = path
        self.projections = list(projections)
        self.db = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            self.db.execute(CHECKPOINTS)
            self.db.execute(VERSIONS)
            for projection in self.projections:
                self._migrate(projection)
                self.db.execute(projection.ddl)

    def _migrate(self, projection: Projection) -> None:
        """Tables written by another version of a projection are dropped, and its checkpoints
        with them: it rebuilds from the log (the log is the truth; tables are derived)."""
        row = self.db.execute("SELECT version FROM _versions WHERE projection = ?",
                              [projection.name]).fetchone()
        if row is not None and row[0] == projection.version:
            return
        if row is not None:
            log.warning("read model changed: rebuilding it from the log",
                        extra={"projection": projection.name, "from": row[0], "to": projection.version})
        for table in projection.tables:
            self.db.execute(f'DROP TABLE IF EXISTS "{table}"')
        self.db.execute("DELETE FROM _checkpoints WHERE projection = ?", [projection.name])
        self.db.execute("INSERT OR REPLACE INTO _versions VALUES (?, ?)",
                        [projection.name, projection.version])

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
            projection.flush(db)
            db.execute(
                "INSERT INTO _checkpoints VALUES (?, ?, ?) "
                "ON CONFLICT (projection, stream) DO UPDATE SET seq = excluded.seq",
                [projection.name, stream, done],
            )
            db.commit()
        except BaseException:
            projection.reset()
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
