"""The `users` read model: one row per account (never a credential)."""

from __future__ import annotations

from typing import ClassVar

import duckdb

from bus.log import Entry
from projections.base import Projection
from schemas import Event, UserEmailVerified, UserLocked, UserRegistered, UserRoleChanged, UserUnlocked


class Users(Projection):
    name: ClassVar[str] = "users"
    streams: ClassVar[tuple[str, ...]] = ("USERS",)
    tables: ClassVar[tuple[str, ...]] = ("users",)
    version: ClassVar[int] = 2
    ddl: ClassVar[str] = """
        CREATE TABLE IF NOT EXISTS users (
            user_id VARCHAR PRIMARY KEY,
            email VARCHAR NOT NULL,
            display_name VARCHAR,
            default_assistant_id VARCHAR,
            email_verified BOOLEAN NOT NULL,
            locked BOOLEAN NOT NULL,
            locked_until BIGINT,             -- ns since the epoch; NULL with locked: until unlocked
            lock_reason VARCHAR,
            created_ts BIGINT NOT NULL,
            role VARCHAR NOT NULL            -- user | operator
        )
    """

    def apply(self, db: duckdb.DuckDBPyConnection, event: Event, entry: Entry) -> None:
        match event:
            case UserRegistered():
                db.execute(
                    "INSERT INTO users VALUES ($uid, $email, $name, $aid, false, false, NULL, NULL, $ts, "
                    "'user') "
                    "ON CONFLICT DO NOTHING",
                    {"uid": event.user_id, "email": event.email, "name": event.display_name,
                     "aid": event.default_assistant_id, "ts": event.ts},
                )
            case UserEmailVerified():
                db.execute("UPDATE users SET email_verified = true WHERE user_id = $uid",
                           {"uid": event.user_id})
            case UserLocked():
                db.execute("UPDATE users SET locked = true, locked_until = $until, lock_reason = $why "
                           "WHERE user_id = $uid",
                           {"uid": event.user_id, "until": event.until_ts, "why": event.reason})
            case UserRoleChanged():
                db.execute("UPDATE users SET role = $role WHERE user_id = $uid",
                           {"uid": event.user_id, "role": event.role})
            case UserUnlocked():
                db.execute("UPDATE users SET locked = false, locked_until = NULL, lock_reason = NULL "
                           "WHERE user_id = $uid", {"uid": event.user_id})

    def queries(self) -> dict[str, str]:
        return {
            "users": """
                SELECT user_id, email, display_name, default_assistant_id, email_verified,
                       locked AND (locked_until IS NULL OR locked_until > epoch_ns(now())) AS locked,
                       locked_until, lock_reason, created_ts, role
                FROM users WHERE user_id > $after ORDER BY user_id LIMIT $limit
            """,
            "user": """
                SELECT user_id, email, display_name, default_assistant_id, email_verified,
                       locked AND (locked_until IS NULL OR locked_until > epoch_ns(now())) AS locked,
                       locked_until, lock_reason, created_ts, role
                FROM users WHERE user_id = $user_id
            """,
        }
