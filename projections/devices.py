"""The `devices` read model: each bound xiaozhi device, its owner and assistant."""

from __future__ import annotations

from typing import ClassVar

import duckdb

from bus.log import Entry
from projections.base import Projection
from schemas import DeviceBound, DeviceUnbound, Event

COLUMNS = "device_id, user_id, assistant_id, name, bound_ts"


class Devices(Projection):
    name: ClassVar[str] = "devices"
    streams: ClassVar[tuple[str, ...]] = ("USERS",)
    tables: ClassVar[tuple[str, ...]] = ("devices",)
    ddl: ClassVar[str] = """
        CREATE TABLE IF NOT EXISTS devices (
            device_id VARCHAR PRIMARY KEY,   -- Device-Id (MAC) as the device sends it
            user_id VARCHAR NOT NULL,
            assistant_id VARCHAR NOT NULL,
            name VARCHAR,
            bound_ts BIGINT NOT NULL
        )
    """

    def apply(self, db: duckdb.DuckDBPyConnection, event: Event, entry: Entry) -> None:
        match event:
            case DeviceBound():
                db.execute(
                    "INSERT OR REPLACE INTO devices VALUES ($did, $uid, $aid, $name, $ts)",
                    {"did": event.device_id, "uid": event.user_id, "aid": event.assistant_id,
                     "name": event.name, "ts": event.ts},
                )
            case DeviceUnbound():
                db.execute("DELETE FROM devices WHERE device_id = $did AND user_id = $uid",
                           {"did": event.device_id, "uid": event.user_id})

    def queries(self) -> dict[str, str]:
        return {
            "devices": f"""
                SELECT {COLUMNS} FROM devices WHERE user_id = $user_id AND device_id > $after
                ORDER BY device_id LIMIT $limit
            """,
            "device": f"SELECT {COLUMNS} FROM devices WHERE device_id = $device_id AND user_id = $user_id",
            "all_devices": f"""
                SELECT {COLUMNS} FROM devices WHERE device_id > $after ORDER BY device_id LIMIT $limit
            """,
        }
