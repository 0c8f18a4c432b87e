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


class ProjectionFailed(Exception):
    """A projection raised while applying a batch: the whole batch was rolled back."""

    def __init__(self, projection: Projection, error: Exception) -> None:
        super().__init__(f"projection {projection.name} failed: {type(error).__name__}: {error}")
        self.projection = projection
        self.error = error


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
        return self.checkpoints(stream).get(projection, 0)

    def checkpoints(self, stream: str) -> dict[str, int]:
        """The last sequence of `stream` applied, per projection."""
        rows = self.db.execute("SELECT projection, seq FROM _checkpoints WHERE stream = ?",
                               [stream]).fetchall()
        return dict(rows)

    def apply(self, projection: Projection, stream: str, entries: Sequence[Entry]) -> int:
        """`apply_all` for one projection, raising that projection's own error."""
        try:
            return self.apply_all((projection,), stream, entries)
        except ProjectionFailed as failed:
            raise failed.error from None

    def apply_all(self, projections: Sequence[Projection], stream: str, entries: Sequence[Entry]) -> int:
        """Apply entries past each projection's checkpoint and move the checkpoints, all in one
        transaction (one commit per batch of the stream, not one per projection).

        An entry at or below a checkpoint was applied before (a redelivery after a restart)
        and is skipped, so nothing is ever applied twice. If a projection raises, nothing of
        the batch is kept and ProjectionFailed names it.
        """
        db = self.db
        db.begin()
        try:
            done = self.checkpoints(stream)
            applied = 0
            for projection in projections:
                applied += self._apply(projection, done, entries)
            db.execute(
                "INSERT INTO _checkpoints SELECT p, $stream, s "
                "FROM (SELECT unnest($p) AS p, unnest($s) AS s) "
                "ON CONFLICT (projection, stream) DO UPDATE SET seq = excluded.seq",
                {"stream": stream, "p": [p.name for p in projections],
                 "s": [done.get(p.name, 0) for p in projections]},
            )
            db.commit()
        except BaseException:
            for projection in projections:
                projection.reset()
            db.rollback()
            raise
        return applied

    def _apply(self, projection: Projection, done: dict[str, int], entries: Sequence[Entry]) -> int:
        """Apply to one projection inside the caller's transaction; moves done[projection]."""
        try:
            last = done.get(projection.name, 0)
            applied = 0
            for entry in entries:
                if entry.seq <= last:
                    continue
                if entry.event is not None:  # undecodable bytes: the consumers dead-letter them
                    projection.apply(self.db, entry.event, entry)
                    applied += 1
                last = entry.seq
            projection.flush(self.db)
        except Exception as exc:
            raise ProjectionFailed(projection, exc) from exc
        done[projection.name] = last
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
