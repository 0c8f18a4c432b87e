"""Costs bounded per process (#14): argon2 runs a few hashes at a time (503 beyond its
queue) without slowing a real-time turn, and a lock is recorded and logged once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
import websockets

from actors.config import Argon2Settings
from bus.log import load
from bus.server import EmbeddedServer
from cli.echo_llm import OpenAIServer
from schemas import UserLocked
from tests.api_harness import Api, api_config, serve_stack
from tests.test_connection_limits import edge

LOGIN = "/api/v1/auth/login"


# --- argon2 ----------------------------------------------------------------------------------

@pytest.fixture
async def stack(module_nats: EmbeddedServer, llm: OpenAIServer, tmp_path: Path) -> AsyncIterator[Api]:
    """The edge with the real argon2 cost (64 MiB), two hashes at a time and two waiting."""
    config = api_config()
    config.auth = msgspec.structs.replace(config.auth, argon2=Argon2Settings(concurrency=2, queue=2))
    async with serve_stack(module_nats.url, tmp_path, llm.base_url, ["dialogue", "tools"], config) as api:
        yield api


async def test_concurrent_logins_hash_a_few_at_a_time_and_a_turn_stays_quick(stack: Api) -> None:
    email, password = "argon@example.com", "correct horse 9"
    r = await stack.client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    capacity = 4  # two hashing, two waiting

    async def login() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=stack.edge.url, timeout=120) as client:
            r = await client.post(LOGIN, json={"email": email, "password": password})
        return r, time.monotonic() - started

    async def turn() -> float:
        async with websockets.connect(stack.edge.ws_url + "/ws") as ws:
            await ws.recv()
            await asyncio.sleep(0.3)  # the logins are hashing now
            started = time.monotonic()
            await ws.send(json.dumps({"type": "user.text", "text": "hello there"}))
            async with asyncio.timeout(30):
                while json.loads(await ws.recv())["type"] != "assistant.message":
                    pass
            return time.monotonic() - started

    results = await asyncio.gather(*(login() for _ in range(20)), turn())
    logins: list[tuple[httpx.Response, float]] = results[:-1]  # type: ignore[assignment]
    took = results[-1]
    served = [r for r, _ in logins if r.status_code == 200]
    busy = [(r, t) for r, t in logins if r.status_code == 503]
    # Two hashing and two waiting: the other sixteen are told to come back, without waiting.
    assert 1 <= len(served) <= capacity, [r.status_code for r, _ in logins]
    assert len(served) + len(busy) == 20
    slowest_served = max(t for r, t in logins if r.status_code == 200)
    for r, t in busy:
        assert r.json()["error"]["code"] == "busy" and r.headers["retry-after"] == "1"
        assert t < slowest_served
    assert took < 10, took  # generous: a turn takes well under a second when idle
    # And they can, once the queue is empty.
    r, _ = await login()
    assert r.status_code == 200, r.text


# --- lockout ---------------------------------------------------------------------------------

async def test_a_lock_is_recorded_and_logged_once(module_nats: EmbeddedServer, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    config = api_config(lockout_failures=3, lockout_seconds=60)
    async with edge(module_nats, tmp_path, config) as api:
        email = "locked@example.com"
        r = await api.client.post("/api/v1/auth/register",
                                  json={"email": email, "password": "correct horse 9"})
        assert r.status_code == 201
        user_id = r.json()["user_id"]
        caplog.set_level(logging.WARNING, logger="vagent.edge.accounts")
        wrong = {"email": email, "password": "wrong horse 99"}
        answers = await asyncio.gather(*(api.client.post(LOGIN, json=wrong) for _ in range(8)))
        assert {a.status_code for a in answers} <= {401, 423}
        assert (await api.client.post(LOGIN, json=wrong)).status_code == 423
        entries, _ = await load(api.services.bus, "user", user_id)
        assert len([e for e in entries if isinstance(e.event, UserLocked)]) == 1
        logged = [r for r in caplog.records if "account locked" in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in logged]
