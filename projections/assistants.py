"""The `assistants` read model: each assistant's current persona and provider choice."""

from __future__ import annotations

from typing import Any, ClassVar

import duckdb
import msgspec

from bus.log import Entry
from projections.base import Projection
from schemas import (
    ASSISTANT_SETTINGS,
    AssistantCreated,
    AssistantDeleted,
    AssistantSettings,
    AssistantUpdated,
    Event,
    TurnSettings,
)

SETTINGS = ASSISTANT_SETTINGS
COLUMNS = "assistant_id, owner_id, " + ", ".join(SETTINGS) + ", created_ts, updated_ts"


def _column(field: msgspec.structs.FieldInfo) -> str:
    """A setting's column: a list of names is a VARCHAR[], text (and a group of settings,
    as JSON) a VARCHAR; only a setting whose default is None may be NULL."""
    kind = "VARCHAR[]" if field.type == list[str] else "VARCHAR"
    return f"{field.name} {kind}" + ("" if field.default is None else " NOT NULL")


# Settings that are groups of settings (Structs): stored as JSON text.
_GROUPS: dict[str, type[msgspec.Struct]] = {"turn": TurnSettings}


def _stored(name: str, value: object) -> object:
    return msgspec.json.encode(value).decode() if name in _GROUPS and value is not None else value


def settings_of(row: dict[str, Any]) -> dict[str, Any]:
    """A row's settings as the Structs hold them (groups decoded from their JSON)."""
    out = {k: row[k] for k in SETTINGS if k in row}
    for name, kind in _GROUPS.items():
        if isinstance(out.get(name), str):
            out[name] = msgspec.json.decode(out[name], type=kind)
    return out


SETTING_COLUMNS = ",\n            ".join(_column(f) for f in msgspec.structs.fields(AssistantSettings))


class Assistants(Projection):
    name: ClassVar[str] = "assistants"
    streams: ClassVar[tuple[str, ...]] = ("ASSISTANTS",)
    tables: ClassVar[tuple[str, ...]] = ("assistants",)
    version: ClassVar[int] = 3  # a column per setting: a new setting rebuilds the table
    ddl: ClassVar[str] = f"""
        CREATE TABLE IF NOT EXISTS assistants (
            assistant_id VARCHAR PRIMARY KEY,
            owner_id VARCHAR,                -- NULL: the system's default assistant
            {SETTING_COLUMNS},
            created_ts BIGINT NOT NULL,
            updated_ts BIGINT NOT NULL
        )
    """

    def apply(self, db: duckdb.DuckDBPyConnection, event: Event, entry: Entry) -> None:
        match event:
            case AssistantCreated():
                values = {k: _stored(k, getattr(event, k)) for k in SETTINGS}
                db.execute(
                    f"INSERT INTO assistants ({COLUMNS}) VALUES ($assistant_id, $owner_id, "
                    + ", ".join(f"${k}" for k in SETTINGS) + ", $ts, $ts) ON CONFLICT DO NOTHING",
                    {"assistant_id": event.assistant_id, "owner_id": event.owner_id, "ts": event.ts,
                     **values},
                )
            case AssistantUpdated():
                changed = {k: _stored(k, getattr(event, k)) for k in SETTINGS
                           if getattr(event, k) is not None}
                sets = "".join(f"{k} = ${k}, " for k in changed)
                db.execute(f"UPDATE assistants SET {sets}updated_ts = $ts WHERE assistant_id = $aid",
                           {"aid": event.assistant_id, "ts": event.ts, **changed})
            case AssistantDeleted():
                db.execute("DELETE FROM assistants WHERE assistant_id = $aid",
                           {"aid": event.assistant_id})

    def queries(self) -> dict[str, str]:
        return {
            # Every list and lookup is scoped to its owner: isolation lives in the SQL.
            "assistants": f"""
                SELECT {COLUMNS} FROM assistants
                WHERE owner_id IS NOT DISTINCT FROM $owner_id AND assistant_id > $after
                ORDER BY assistant_id LIMIT $limit
            """,
            "assistant": f"""
                SELECT {COLUMNS} FROM assistants
                WHERE assistant_id = $assistant_id AND owner_id IS NOT DISTINCT FROM $owner_id
            """,
            # For the actors, which read the assistant a session was started against.
            "assistant_settings": f"SELECT {COLUMNS} FROM assistants WHERE assistant_id = $assistant_id",
            "all_assistants": f"""
                SELECT {COLUMNS} FROM assistants WHERE assistant_id > $after
                ORDER BY assistant_id LIMIT $limit
            """,
        }
