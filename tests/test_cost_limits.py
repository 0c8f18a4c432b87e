"""Costs bounded per process and per user: argon2 runs a few hashes at a time (503
beyond its queue) without slowing a real-time turn, a lock is recorded and logged once,
and uploads stop at the owner's quota and at the chunk limit before any work."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from bus.log import load
from bus.server import EmbeddedServer
from projections.knowledge.index import index_document
from projections.knowledge.parse import ParseError
from projections.knowledge.parse import parse as real_parse
from schemas import UserLocked
from settings.config import Argon2Settings, Config
from tests.api_harness import Api, api_config
from tests.test_connection_limits import edge, edge_config

LOGIN = "/api/v1/auth/login"


# --- argon2 ----------------------------------------------------------------------------------

def real_argon2_two_at_a_time(config: Config) -> Config:
    """The real argon2 cost (64 MiB), two hashes at a time and two waiting."""
    config.auth = msgspec.structs.replace(config.auth, argon2=Argon2Settings(concurrency=2, queue=2))
    return config


pytestmark = pytest.mark.stack("dialogue", "tools", settings=real_argon2_two_at_a_time)


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


# --- uploads ---------------------------------------------------------------------------------

async def stored(api: Api) -> tuple[int, int]:
    """(document events, Object Store messages of bucket `docs`)."""
    js = api.services.bus.js
    return ((await js.stream_info("DOCS")).state.messages, (await js.stream_info("OBJ_docs")).state.messages)


async def upload(api: Api, h: dict[str, str], name: str, data: bytes) -> httpx.Response:
    return await api.client.post("/api/v1/documents", headers=h,
                                 files={"file": (name, data, "text/plain")})


async def test_an_upload_past_the_quota_gets_413_and_nothing_is_stored(
        module_nats: EmbeddedServer, tmp_path: Path) -> None:
    config = edge_config(max_documents_per_user=2, max_document_bytes_per_user=1000)
    async with edge(module_nats, tmp_path, config) as api:
        h = await api.user()
        first = await upload(api, h, "a.txt", b"a" * 400)
        assert first.status_code == 202, first.text
        before = await stored(api)
        r = await upload(api, h, "b.txt", b"b" * 601)  # 1001 bytes in all
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["code"] == "quota_exceeded" and "1000 bytes" in error["message"]
        assert error["details"] == {"quota": "bytes", "limit": 1000, "used": 400, "size": 601}
        assert await stored(api) == before
        assert (await upload(api, h, "b.txt", b"b" * 600)).status_code == 202  # exactly full
        r = await upload(api, h, "c.txt", b"c")
        assert r.status_code == 413 and r.json()["error"]["details"] == {
            "quota": "documents", "limit": 2, "used": 2}, r.text
        # Concurrent uploads cannot squeeze past it either.
        other = await api.user()
        answers = await asyncio.gather(*(upload(api, other, f"{n}.txt", b"x") for n in range(5)))
        assert sorted(a.status_code for a in answers) == [202, 202, 413, 413, 413]
        listed = (await api.client.get("/api/v1/documents", headers=other)).json()["items"]
        assert len(listed) == 2
        # Deleting one makes room.
        r = await api.client.delete(f"/api/v1/documents/{first.json()['document_id']}", headers=h)
        assert r.status_code == 204
        assert (await upload(api, h, "c.txt", b"c")).status_code == 202


async def test_a_text_too_long_for_the_chunk_limit_is_refused_at_upload(
        module_nats: EmbeddedServer, tmp_path: Path) -> None:
    config = edge_config()
    config.knowledge.max_chunks = 10
    async with edge(module_nats, tmp_path, config) as api:
        h = await api.user()
        r = await upload(api, h, "long.txt", b"word " * 2000)  # 8000 letters: at least 10 chunks
        assert r.status_code == 202, r.text
        before = await stored(api)
        r = await upload(api, h, "longer.txt", b"words " * 2000)  # 10000: at least 13
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["code"] == "document_too_long"
        assert error["details"] == {"field": "file", "min_chunks": 13, "limit": 10}
        assert await stored(api) == before
        assert len((await api.client.get("/api/v1/documents", headers=h)).json()["items"]) == 1


def test_the_indexer_refuses_a_long_document_before_chunking_or_embedding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*args: object) -> None:
        raise AssertionError("chunked or embedded a document over the limit")

    parsed: list[str] = []

    def parse(*args: Any, **kwargs: Any) -> Any:
        parsed.append("parsed")
        return real_parse(*args, **kwargs)

    monkeypatch.setattr("projections.knowledge.index.chunk", no_work)
    monkeypatch.setattr("projections.knowledge.index.embedder", no_work)
    monkeypatch.setattr("projections.knowledge.index.parse", parse)
    text = ("A sentence of some length about nothing much at all. " * 40_000).encode()  # 2.2 MB
    html = b"<html><body><p>" + text[:1_000_000] + b"</p></body></html>"
    # Plain text: refused from its size, unparsed; HTML: once parsed, before chunking.
    for data, kind, was_parsed in ((text, "text/plain", False), (html, "text/html", True)):
        parsed.clear()
        with pytest.raises(ParseError, match=r"too long: at least \d+ chunks, the limit is 1000"):
            index_document(None, data, document_id="01DOC", owner_id=None,  # type: ignore[arg-type]
                           title="t", content_type=kind, max_chunks=1000)
        assert bool(parsed) is was_parsed
