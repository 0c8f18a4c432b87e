"""`vagent chat` and `vagent say` on a real stack (NATS, the dialogue actor, an echoing LLM that
streams a word at a time): in a terminal the input line stays the user's while an answer
streams (prompt_toolkit, driven through its pipe input); piped, the transcript has one line per
prompt and per answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.application.current import get_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from bus.server import EmbeddedServer
from cli.chat import chat
from devservers.echo_llm import OpenAIServer
from hosting.logs import console
from schemas import UserText
from tests.api_harness import Api
from tests.conftest import wait_for
from tests.procs import vagent

pytestmark = pytest.mark.stack("dialogue", llm="slow_llm")


@pytest.fixture(scope="module")
def slow_llm() -> Iterator[OpenAIServer]:
    """A word every 0.15 s: an answer streams long enough to type during it."""
    server = OpenAIServer(token_delay=0.15).start()
    yield server
    server.stop()


class Screen(DummyOutput):
    """A terminal that keeps the text written to it (the prompt's drawing and what is
    printed above it), without the cursor movements."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def write(self, data: str) -> None:
        self.text.append(data)

    def write_raw(self, data: str) -> None:
        self.text.append(data)


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_typing_while_an_answer_streams_stays_on_the_input_line(stack: Api) -> None:
    bus = stack.services.bus
    sid = "chat-typing"
    question = "tell me a story about a dragon and a kettle in a quiet little kitchen"
    screen = Screen()
    with create_pipe_input() as keys, create_app_session(input=keys, output=screen):
        talk = asyncio.create_task(chat(bus, sid, 60, interactive=True))
        await until(lambda: get_app_session().app is not None)
        keys.send_text(question + "\r")
        # The answer's unfinished line is shown above the prompt as its words arrive …
        await until(lambda: console.partial.startswith("assistant> You said:"))
        keys.send_text("how long")
        app = get_app_session().app
        assert app is not None
        await until(lambda: app.current_buffer.text == "how long")
        shown = console.partial
        await until(lambda: console.partial != shown)
        # … while what the user types stays theirs, apart from the answer.
        assert app.current_buffer.text == "how long"
        assert "how long" not in console.partial
        keys.send_text(" does that take\r")  # entered mid-answer: it waits for the answer's end
        await until(lambda: "assistant> You said: how long does that take." in "".join(screen.text))
        keys.send_text("/quit\r")
        await asyncio.wait_for(talk, 30)
    printed = "".join(screen.text)
    first = printed.index(f"you> {question}\n")
    answer = printed.index(f"assistant> You said: {question}.\n")
    second = printed.index("you> how long does that take\n")
    assert first < answer < second < printed.index("assistant> You said: how long does that take.\n")
    assert "you> assistant>" not in printed
    # The second question went out after the first answer was complete, not into it.
    events = await wait_for(bus, sid, lambda es: sum(isinstance(e, UserText) for e in es) == 2)
    assert [e.text for e in events if isinstance(e, UserText)] == [question, "how long does that take"]
    assert not any(getattr(e, "interrupted", False) for e in events)


async def test_piped_chat_prints_one_line_per_prompt_and_answer(stack: Api,
                                                                 module_nats: EmbeddedServer) -> None:
    done = await asyncio.to_thread(vagent, "chat", "--nats", module_nats.url, stdin="hello\n\n/quit\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("session chat-")
    assert lines[1:] == ["you> hello", "assistant> You said: hello.", "you> /quit"]


async def test_say_with_stdout_piped_prints_the_answer_alone(stack: Api, module_nats: EmbeddedServer
                                                             ) -> None:
    said = await asyncio.to_thread(vagent, "say", "the kettle sings", "-s", "say-piped", "--nats",
                                   module_nats.url)
    assert said.returncode == 0, said.stderr
    assert said.stdout == "You said: the kettle sings.\n"
