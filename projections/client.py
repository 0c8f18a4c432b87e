"""Reading the read models from anywhere: over NATS from the running service,
or straight from the DuckDB file when no service runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from bus.client import Bus
from bus.errors import BusError
from bus.subjects import query as query_subject
from projections.registry import PROJECTIONS
from projections.runtime import FRESH, FRESH_TIMEOUT, store_path
from projections.store import ReadStore


class QueryError(Exception):
    pass


def _sql(name: str) -> str:
    for cls in PROJECTIONS:
        queries = cls().queries()
        if name in queries:
            return queries[name]
    raise QueryError(f"no read query named {name!r}")


async def run_query(bus: Bus | None, data_dir: Path | None, name: str, params: dict[str, Any], *,
                    fresh: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Run a named read query. `fresh` answers only after the read model has applied
    every event stored before the call (read-your-writes), at the cost of one stream lookup.
    Without a `data_dir` only the running service can answer."""
    sql = _sql(name)
    if bus is not None:
        request = {**params, FRESH: True} if fresh else params
        try:
            answer = json.loads(await bus.request(query_subject(name), json.dumps(request).encode(),
                                                  timeout=FRESH_TIMEOUT + 5.0))
        except BusError:
            pass  # nobody serves it: read the file below
        else:
            if "error" in answer:
                raise QueryError(answer["error"])
            return answer["columns"], answer["rows"]
    if data_dir is None:
        raise QueryError(f"no read-model service answers {name!r} and no data directory to read")
    path = store_path(data_dir)
    if not path.exists():
        raise QueryError(f"no read store at {path}: run `vagent up` or `vagent projections rebuild`")
    try:
        store = ReadStore(path, [], read_only=True)
        try:
            return store.query(sql, params)
        finally:
            store.close()
    except (OSError, duckdb.Error) as exc:  # e.g. the file is locked by another process's writer
        raise QueryError(f"cannot read {path}: {exc}") from exc
