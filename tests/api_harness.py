"""The edge API served for tests: uvicorn on a free port over a real NATS and read store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import httpx
import msgspec
import pytest

from actors.runtime import ActorHost
from bus.client import Bus
from edge.server import EdgeServer
from projections.runtime import ProjectionService
from schemas import new_id
from settings.config import Argon2Settings, Config
from settings.llm import openai_provider


class Api:
    """The edge app served by uvicorn on a free port, over a real NATS and read store."""

    def __init__(self, edge: EdgeServer, client: httpx.AsyncClient) -> None:
        self.edge = edge
        self.services = edge.services
        self.client = client

    async def user(self, email: str | None = None, password: str = "correct horse 9") -> dict[str, str]:
        """Register and log in a fresh user; their Authorization header."""
        email = email or f"u{new_id().lower()}@example.com"
        r = await self.client.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        r = await self.client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


def api_config(**auth: Any) -> Config:
    """Cheap argon2 parameters (still argon2id) and generous rate limits for tests (the API's
    per address, WebRTC offers and typed turns per address: the tests' many sessions all
    come from one address)."""
    config = Config()
    config.auth = msgspec.structs.replace(
        config.auth, argon2=Argon2Settings(time_cost=1, memory_kib=1024, parallelism=1),
        rate_limit=10_000, **auth)
    config.edge = msgspec.structs.replace(config.edge, offers_per_second=10_000.0, offer_burst=10_000,
                                          max_turns_per_address_second=10_000.0)
    return config


@contextlib.asynccontextmanager
async def serve_api(url: str, data_dir: Path, config: Config | None = None) -> AsyncIterator[Api]:
    bus = await Bus.connect(url, name="test-api")
    await bus.declare()
    projections = ProjectionService(bus, data_dir)
    await projections.start()
    edge = EdgeServer(bus, config or api_config(), data_dir, port=0)
    await edge.start()
    try:
        async with httpx.AsyncClient(base_url=edge.url, timeout=30) as client:
            yield Api(edge, client)
    finally:
        await edge.stop()
        await projections.stop()
        await bus.close()


@contextlib.asynccontextmanager
async def serve_stack(url: str, data_dir: Path, llm_base_url: str, actors: list[str],
                      config: Config | None = None) -> AsyncIterator[Api]:
    """The edge with actors beside it on the same NATS, both with `config` (as `vagent up`
    runs them); the dialogue talks to `llm_base_url`, the one provider OPENAI_BASE_URL makes."""
    config = config or api_config()
    config = msgspec.structs.replace(config, llm=msgspec.structs.replace(
        config.llm, providers=[openai_provider(llm_base_url)]))
    bus = await Bus.connect(url, name="test-stack-actors")
    await bus.declare()
    host = ActorHost(bus, actors, config, data_dir)
    await host.start()
    try:
        async with serve_api(url, data_dir, config) as api:
            yield api
    finally:
        await host.stop()
        await bus.close()


@contextlib.contextmanager
def loopback_ice_patch() -> Iterator[None]:
    """aioice leaves 127.0.0.1 out of its host candidates and a CI machine may have no other
    interface: WebRTC peers in this process gather on loopback."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aioice.ice, "get_host_addresses",
                      lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
        yield
