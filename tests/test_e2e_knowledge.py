"""End to end through the real `vagent up`: a user uploads a manual, asks
the assistant about it by voice over `/ws`, and hears an answer that cites the manual;
`vagent sessions` and `vagent session show` display that conversation with its latencies;
`vagent replay` re-runs it with another model and shows the diff; `vagent session export
--wav` holds both voices.

The LLM is a local server speaking OpenAI's wire protocol (the real SDK talks to it);
everything else is the default stack: embedded NATS, Moonshine, Piper, multilingual-e5, LanceDB."""

from __future__ import annotations

import asyncio
import json
import re
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from bus.server import EmbeddedServer
from devservers.echo_llm import OpenAIServer
from tests.fixtures.audio import has_key_words, opus_packets, pcm
from tests.procs import Proc, up, vagent

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
TITLE = "Aurora DW-450 Dishwasher manual"
pytestmark = pytest.mark.slow


class Librarian(OpenAIServer):
    """A model that looks things up: offered knowledge_search, it searches for the user's
    words, then answers with the found passage's sentence nearest the question, naming its
    document."""

    prefix = ""

    def tool_calls_for(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        offered = [t["function"]["name"] for t in body.get("tools") or []]
        last = body["messages"][-1]
        if "knowledge_search" not in offered or last["role"] != "user":
            return []
        return [{"index": 0, "id": f"call_{len(self.requests)}", "type": "function",
                 "function": {"name": "knowledge_search",
                              "arguments": json.dumps({"query": last["content"]})}}]

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        if messages[-1]["role"] != "tool":
            return self.prefix + super().reply_for(messages)
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        found = re.match(r"\[(?P<title>[^\]]+)\][^\n]*?\)\s*(?P<text>.*)", messages[-1]["content"])
        if found is None:
            return self.prefix + "I found nothing about that."
        words = set(re.findall(r"\w{4,}", question.lower()))
        sentences = re.split(r"(?<=[.!?])\s+", found["text"])
        best = max(sentences, key=lambda s: len(words & set(re.findall(r"\w{4,}", s.lower()))))
        return f"{self.prefix}According to the {found['title']}: {best}"


class NewerLibrarian(Librarian):
    prefix = "Newer model. "


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[Librarian, NewerLibrarian]]:
    old, new = Librarian().start(), NewerLibrarian().start()
    yield old, new
    old.stop()
    new.stop()


@pytest.fixture(scope="module")
def stack(module_nats: EmbeddedServer, models: tuple[Librarian, NewerLibrarian],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Path, str]]:
    data = tmp_path_factory.mktemp("data")
    with up(module_nats.url, data, models[0].base_url) as proc:
        api = re.search(r"API\s+(http://\S+/api/v1)/", proc.output())
        assert api, proc.output()
        yield proc, data, api.group(1)


async def ask_by_voice(base: str, token: str, assistant_id: str) -> tuple[str, list[dict[str, Any]], int]:
    """Connect over /ws with Opus audio, wait for the greeting to be spoken, say the
    question at real time, and collect the session's events until the answer was spoken."""
    url = base.replace("http://", "ws://").removesuffix("/api/v1")
    events: list[dict[str, Any]] = []
    audio_frames = 0
    async with websockets.connect(f"{url}/ws?token={token}&assistant_id={assistant_id}&audio=opus",
                                  max_size=None) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "session", hello

        async def until(done: Any, timeout: float) -> None:
            nonlocal audio_frames
            async with asyncio.timeout(timeout):
                while not done():
                    message = await ws.recv()
                    if isinstance(message, bytes):
                        audio_frames += 1
                    else:
                        events.append(json.loads(message))

        def spoken(turn_id: str | None) -> bool:
            return any(e["type"] == "tts.stopped" and e.get("turn_id") == turn_id for e in events)

        await until(lambda: any(e["type"] == "tts.stopped" for e in events), 120)  # the greeting
        await ws.send(json.dumps({"type": "listen.start", "mode": "auto"}))
        for packet in opus_packets(pcm("dishwasher_filter"), 16000, 60):
            await ws.send(packet)
            await asyncio.sleep(0.06)

        def answered() -> bool:
            final = next((e for e in events if e["type"] == "transcript.final"), None)
            return final is not None and spoken(final["id"])

        await until(answered, 180)
    return hello["session_id"], events, audio_frames


async def test_a_manual_asked_by_voice_is_cited_inspected_and_replayed(
        stack: tuple[Proc, Path, str], module_nats: EmbeddedServer,
        models: tuple[Librarian, NewerLibrarian], tmp_path: Path) -> None:
    _, data, base = stack
    _, newer = models
    nats = ["--nats", module_nats.url]

    # A user, their manuals, an assistant that answers from one of them.
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        account = {"email": "kim@example.com", "password": "correct horse 9"}
        assert (await http.post("/auth/register", json=account)).status_code == 201
        token = (await http.post("/auth/login", json=account)).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        ids = []
        for name, title in (("aurora-dishwasher.md", TITLE), ("nimbus-router.html", "Nimbus router")):
            uploaded = await http.post("/documents", headers=auth, data={"title": title},
                                       files={"file": (name, (CORPUS / name).read_bytes())})
            assert uploaded.status_code == 202, uploaded.text
            ids.append(uploaded.json()["document_id"])
        async with asyncio.timeout(120):
            while True:
                docs = [(await http.get(f"/documents/{d}", headers=auth)).json() for d in ids]
                assert all(d["status"] != "failed" for d in docs), docs
                if all(d["status"] == "indexed" for d in docs):
                    break
                await asyncio.sleep(0.2)
        assert all(d["chunks"] > 0 for d in docs)
        created = await http.post("/assistants", headers=auth, json={
            "name": "Home manuals", "persona": "You answer from the household manuals.",
            "greeting": "Hello, ask me about your appliances.", "documents": ids})
        assert created.status_code == 201, created.text
        assistant_id = created.json()["assistant_id"]

    # Asked by voice: transcribed, looked up, answered with the manual's title, spoken.
    sid, events, frames = await ask_by_voice(base, token, assistant_id)
    final = next(e for e in events if e["type"] == "transcript.final")
    assert has_key_words("dishwasher_filter", final["text"]), final["text"]
    turn = [e for e in events if e.get("turn_id") == final["id"]]
    call = next(e for e in turn if e["type"] == "tool.call")
    result = next(e for e in turn if e["type"] == "tool.result")
    assert call["name"] == "knowledge_search" and not result.get("is_error")
    assert result["content"].startswith(f"[{TITLE}]"), result["content"]
    answer = [e for e in turn if e["type"] == "assistant.message"][-1]["text"]
    assert answer.startswith(f"According to the {TITLE}:") and "once a month" in answer, answer
    assert frames > 20  # the greeting and the answer were heard

    # `vagent sessions` lists the conversation with its median latency …
    listed = vagent("sessions", "--user", "kim@example.com", "--json", *nats, "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    row = next(r for r in rows if r["session_id"] == sid)
    assert row["assistant_id"] == assistant_id and row["turns"] == 1, row  # the greeting is not a turn
    assert 0 < row["p50_first_audio_ms"] < 60_000, row
    table = vagent("sessions", "--wide", "--user", "kim@example.com", *nats, "--data-dir", str(data))
    assert sid[:8] in table.stdout and "kim@example.com" in table.stdout and " ms" in table.stdout

    # … `vagent session show` its timeline: the stages' latencies, the tool call, the answer.
    shown = vagent("session", "show", sid, *nats)
    assert shown.returncode == 0, shown.stderr
    for stage in ("end of speech → transcript", "end of speech → first sentence",
                  "end of speech → first audio"):
        assert re.search(re.escape(stage) + r".*\d+ ms", shown.stdout), (stage, shown.stdout)
    assert "tool knowledge_search(" in shown.stdout and TITLE in shown.stdout

    # `vagent replay` re-runs it with another model: same words heard, another answer.
    replayed = vagent("replay", sid, *nats, "--data-dir", str(data), "--llm-base-url",
                      newer.base_url, "--llm-model", "newer", "--json", timeout=600)
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    voice = next(t for t in report["turns"] if t["original"]["input_type"] == "transcript.final")
    assert voice["same_transcript"] and not voice["same_answer"]
    assert voice["replay"]["answer"].startswith(f"Newer model. According to the {TITLE}:")
    assert [t.split("(")[0] for t in voice["replay"]["tools"]] == ["knowledge_search"]
    assert voice["replay"]["latency_ms"]["end of speech → first audio"] > 0
    diff = vagent("replay", sid, *nats, "--data-dir", str(data), "--llm-base-url", newer.base_url,
                  "--no-tts", timeout=600)
    assert "≠ answer" in diff.stdout and "Newer model." in diff.stdout, diff.stdout

    # Both voices, as they happened.
    out = tmp_path / "talk.wav"
    exported = vagent("session", "export", sid, "--wav", str(out), *nats)
    assert exported.returncode == 0, exported.stderr
    assert "1 user utterance(s)" in exported.stdout and "2 spoken answer(s)" in exported.stdout
    with wave.open(str(out)) as w:
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    user, assistant = (np.abs(stereo[:, c].astype(np.int32)) > 1000 for c in (0, 1))
    assert user.any() and assistant.any()
    # The greeting is over before the question starts; the answer comes after it.
    assert np.flatnonzero(assistant)[0] < np.flatnonzero(user)[0] < np.flatnonzero(assistant)[-1]
