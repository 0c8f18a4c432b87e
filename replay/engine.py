"""A recorded session's user inputs through today's actors, compared (`vagent replay SID`).

Isolation: the replay starts a NATS server of its own (embedded `nats-server`, a temporary
store, its own streams and buckets) and runs the actors (asr, dialogue, tools, tts) and the
read models in this process against it. The original server is only read: the session's log,
its utterance blobs, the assistant's events, and the knowledge base of the data directory (its
LanceDB chunks, for the assistant's documents). Nothing is written there.

Per original turn, in order:
- a typed input (`user.text`) is published as `user.text` (source `replay`);
- a `/ws` photo (`user.image`, then its `user.text` of source `image`) is stored and recorded
  again, described again by the `[vision]` model of the replay's settings, and its turn made
  of that new description (without a vision model: of the recorded one);
- a spoken one (`transcript.final` with its utterance blob) is sent as PCM16 audio frames into
  the replay session's `audio.in`, followed by silence, so the ASR segments and transcribes it
  again (a transcript whose audio was not stored is sent as text);
- the replay waits for the turn's final `assistant.message` (and, with TTS, for the answer to
  finish speaking, as a user would before talking again).
Then each turn is shown side by side: transcript, answer, tool calls, latencies.

The LLM can be swapped (`--llm-base-url`, `--llm-model`), as can the assistant (`--assistant`:
its persona, greeting, voice, tools are copied into the replay's server).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bus.blobs import get_blob, put_image
from bus.client import Bus, Message
from bus.errors import BusError
from bus.log import Entry, load
from bus.server import EmbeddedServer, free_port
from bus.subjects import audio_in, session_events
from domain import vision
from domain.errors import DomainError
from projections.bulk import Row
from replay.log import fold_turns, session_log, stages
from schemas import (
    AssistantCreated,
    AssistantMessage,
    AssistantSentence,
    AudioParams,
    DecodeError,
    Error,
    Event,
    SessionEnded,
    SessionStarted,
    ToolCall,
    ToolResult,
    TranscriptFinal,
    TtsStopped,
    UserImage,
    UserText,
    decode,
)
from settings.config import Config, ProviderConfig
from settings.llm import provider_configs

RATE = 16000
CHUNK_MS = 60
TRAILING_SILENCE_MS = 1200  # more than the VAD's silence hold: the utterance ends


class ReplayError(Exception):
    pass


@dataclass
class Side:
    """One turn as recorded, or as replayed."""

    input_type: str | None = None
    transcript: str | None = None  # what the user said or typed
    answer: str | None = None
    tools: list[str] = field(default_factory=list)  # "name(arguments) → result"
    interrupted: bool = False
    error: str | None = None
    provider: str | None = None
    model: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class TurnDiff:
    n: int
    original: Side
    replay: Side
    note: str | None = None

    @property
    def same_transcript(self) -> bool:
        return _norm(self.original.transcript) == _norm(self.replay.transcript)

    @property
    def same_answer(self) -> bool:
        return _norm(self.original.answer) == _norm(self.replay.answer)

    @property
    def same_tools(self) -> bool:
        return [t.split("(")[0] for t in self.original.tools] == [t.split("(")[0] for t in self.replay.tools]


@dataclass
class Report:
    session_id: str
    assistant_id: str | None
    llm: str
    turns: list[TurnDiff]

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "assistant_id": self.assistant_id, "llm": self.llm,
                "turns": [{**asdict(t), "same_transcript": t.same_transcript,
                           "same_answer": t.same_answer, "same_tools": t.same_tools} for t in self.turns]}


def _norm(text: str | None) -> str:
    return re.sub(r"[^\w ]", "", (text or "").lower()).strip()


def side(turn: Row, events: list[Event]) -> Side:
    tid = turn["turn_id"]
    results = {e.call_id: e for e in events if isinstance(e, ToolResult) and e.turn_id == tid}
    tools = []
    for call in (e for e in events if isinstance(e, ToolCall) and e.turn_id == tid):
        result = results.get(call.call_id)
        tools.append(f"{call.name}({call.arguments})" + (f" → {result.content}" if result else ""))
    error = next((f"{e.code}: {e.message}" for e in events if isinstance(e, Error) and e.turn_id == tid),
                 None)
    return Side(input_type=turn["input_type"], transcript=turn["input_text"], answer=turn["answer_text"],
                tools=tools, interrupted=bool(turn["interrupted"]), error=error,
                provider=turn["provider"], model=turn["model"],
                latency_ms={s.name: round(s.ms, 1) for s in stages(turn)})


class Watch:
    """The replay session's log events as they are stored (core subscription on its subjects)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()

    async def on_message(self, msg: Message) -> None:
        with contextlib.suppress(DecodeError):
            self.events.append(decode(msg.data))
            self.changed.set()

    async def until(self, found: Any, timeout: float, what: str) -> Any:
        """The first value `found(events)` returns that is not None, within `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                self.changed.clear()
                value = found(self.events)
                if value is not None:
                    return value
                await self.changed.wait()

    def mark(self) -> int:
        return len(self.events)


def final_answer(turn_id: str) -> Callable[[list[Event]], Event | None]:
    def found(events: list[Event]) -> Event | None:
        for e in events:
            if getattr(e, "turn_id", None) != turn_id:
                continue
            if isinstance(e, AssistantMessage) and not e.tool_calls:
                return e
            if isinstance(e, Error | SessionEnded):
                return e
        return None

    return found


def spoken(turn_id: str) -> Callable[[list[Event]], bool | None]:
    """The turn's speech is over (or could not be made)."""
    def found(events: list[Event]) -> bool | None:
        return any(e.turn_id == turn_id and (isinstance(e, TtsStopped)
                                             or (isinstance(e, Error) and e.source == "tts"))
                   for e in events if isinstance(e, TtsStopped | Error)) or None

    return found


def greets(assistant_log: list[Entry]) -> bool:
    greeting = None
    for entry in assistant_log:
        value = getattr(entry.event, "greeting", None)
        if isinstance(entry.event, AssistantCreated) or value is not None:
            greeting = value
    return bool((greeting or "").strip())


def replay_providers(config: Config, base_url: str | None, model: str | None, name: str = "replay"
                     ) -> list[ProviderConfig] | None:
    """The replay's LLM providers when the command swaps them (None: the configured ones);
    a base URL given makes one provider called `name`."""
    if not (base_url or model):
        return None
    configs = provider_configs(config)
    if base_url:
        return [ProviderConfig(name=name, base_url=base_url,
                               model=model or (configs[0].model if configs else "gpt-4o-mini"),
                               api_key_env="OPENAI_API_KEY")]
    return [msgspec.structs.replace(c, model=model) for c in configs]


def _photo_turns(events: list[Event]) -> list[tuple[UserImage, UserText]]:
    """Each `/ws` photo and the turn made of its description (the next `image` text)."""
    pairs, image = [], None
    for event in events:
        if isinstance(event, UserImage) and event.source == "ws":
            image = event
        elif isinstance(event, UserText) and event.source == "image" and image is not None:
            pairs.append((image, event))
            image = None
    return pairs


async def _photo(rbus: Bus, sid: str, config: Config, recorded: str, image: UserImage, data: bytes
                 ) -> tuple[UserText, str | None]:
    """The photo stored and recorded in the replay, and its turn's text: described again by
    the replay's vision model, else the recorded description (and a note why)."""
    ref = await put_image(rbus, f"{sid}/{image.id}", data, image.image.format)
    await rbus.publish(msgspec.structs.replace(image, image=ref))
    try:
        description = await vision.describe(config.vision, data, image.image.format, image.question)
    except DomainError as exc:
        return (UserText(session_id=sid, text=recorded, source="image"),
                f"the photo was not described again ({exc.code}): its recorded description was used")
    return UserText(session_id=sid, text=vision.turn_text(image.question, description),
                    source="image"), None


def describe(configs: list[ProviderConfig]) -> str:
    return ", ".join(f"{c.name} {c.model} at {c.base_url}" for c in configs)


async def replay_session(bus: Bus, session_id: str, *, config: Config,
                         llm_base_url: str | None = None, llm_model: str | None = None,
                         assistant_id: str | None = None, tts: bool = True,
                         timeout: float = 120.0, knowledge_dir: Path | None = None) -> Report:
    """`config`: the settings the replay's actors run with (the command's); `knowledge_dir`:
    the data directory of the stack that recorded the session, whose knowledge base the
    replay's searches read (only the log is copied into the replay's own server)."""
    try:
        entries = await session_log(bus, session_id)
    except BusError as exc:
        raise ReplayError(str(exc)) from None
    original_events = [e.event for e in entries if e.event is not None]
    turns = fold_turns(entries)
    inputs = {e.id: e for e in original_events if isinstance(e, UserText | TranscriptFinal)}
    if not turns:
        raise ReplayError(f"session {session_id} has no user input to replay")
    started = next((e for e in original_events if isinstance(e, SessionStarted)), None)
    aid = assistant_id or (started.assistant_id if started else None)
    assistant_log: list[Entry] = []
    if aid:
        assistant_log, _ = await load(bus, "assistant", aid)
        if assistant_id and not assistant_log:
            raise ReplayError(f"no assistant {assistant_id!r}")
    audio: dict[str, bytes] = {}
    for turn in turns:
        event = inputs[turn["turn_id"]]
        if isinstance(event, TranscriptFinal) and event.audio is not None:
            with contextlib.suppress(Exception):  # no blob: the transcript is sent as text
                audio[event.id] = await get_blob(bus, event.audio)
    voice = bool(audio)
    photos: dict[str, tuple[UserImage, bytes]] = {}
    for image, typed in _photo_turns(original_events):
        with contextlib.suppress(Exception):  # no blob: the recorded description is used
            photos[typed.id] = (image, await get_blob(bus, image.image))

    seed = [e.event for e in assistant_log  # the assistant, as the original server knows it
            if e.event is not None and not (aid and getattr(e.event, "assistant_id", None) != aid)]
    async with isolated_stack(config, seed=seed, providers=replay_providers(config, llm_base_url, llm_model),
                              voice=voice, tts=tts, knowledge_dir=knowledge_dir) as stack:
        return await _run(stack, session_id, started, aid, assistant_log, turns, inputs, audio, photos,
                          original_events, config=config, tts=tts, voice=voice, timeout=timeout)


@dataclass
class Stack:
    """A running isolated stack: its bus, its data directory, which LLM answers."""

    bus: Bus
    data: Path
    llm: str


@contextlib.asynccontextmanager
async def isolated_stack(config: Config, *, seed: Sequence[Event] = (),
                         providers: list[ProviderConfig] | None = None, voice: bool = False,
                         tts: bool = True, knowledge_dir: Path | None = None,
                         name: str = "replay") -> AsyncIterator[Stack]:
    """A stack nobody else sees: a NATS server of its own on a temporary store, the read
    models and the actors (dialogue and tools; asr with `voice`, tts with `tts`) in this
    process, all removed on the way out. `seed` events (an assistant) are published before
    the read models start, so the actors find them; `providers` replace the configured LLMs;
    `knowledge_dir` is whose knowledge base the tools search."""
    from actors.base import Actor
    from actors.dialogue.actor import Dialogue
    from actors.runtime import ActorHost
    from actors.tools.actor import Tools
    from projections.runtime import ProjectionService

    workdir = Path(tempfile.mkdtemp(prefix=f"vagent-{name}-"))
    server = EmbeddedServer(workdir / "nats", port=free_port())
    await asyncio.to_thread(server.start)
    rbus: Bus | None = None
    service: ProjectionService | None = None
    host: ActorHost | None = None
    try:
        rbus = await Bus.connect(server.url, name=f"vagent-{name}")
        await rbus.declare()
        for event in seed:
            await rbus.publish(event)
        data = workdir / "data"
        data.mkdir()
        service = ProjectionService(rbus, data)
        await service.start()
        await service.caught_up()
        actors: list[str | Actor] = [Dialogue(rbus, config, data, providers=providers),
                                     Tools(rbus, config, knowledge_dir),
                                     *(["asr"] if voice else []), *(["tts"] if tts else [])]
        host = ActorHost(rbus, actors, config, data)
        await host.start()
        yield Stack(rbus, data, describe(providers or provider_configs(config)))
    finally:
        if host is not None:
            await host.stop()
        if service is not None:
            await service.stop()
        if rbus is not None:
            await rbus.close()
        await asyncio.to_thread(server.stop)
        shutil.rmtree(workdir, ignore_errors=True)


async def _run(stack: Stack, sid: str, started: SessionStarted | None, aid: str | None,
               assistant_log: list[Entry], turns: list[Row], inputs: dict[str, UserText | TranscriptFinal],
               audio: dict[str, bytes], photos: dict[str, tuple[UserImage, bytes]],
               original_events: list[Event], *, config: Config, tts: bool, voice: bool,
               timeout: float) -> Report:
    rbus = stack.bus
    watch = Watch()
    sub = await rbus.subscribe(session_events(sid), watch.on_message)
    try:
        opening = SessionStarted(
            session_id=sid, transport="replay", user_id=started.user_id if started else None,
            assistant_id=aid, audio_in=AudioParams(format="pcm16", sample_rate=RATE, frame_duration=CHUNK_MS),
            audio_out=started.audio_out if started else None)
        await rbus.publish(opening)
        if tts and greets(assistant_log):  # the greeting is spoken first, as it was
            with contextlib.suppress(TimeoutError):
                await watch.until(final_answer(opening.id), 10, "greeting")
                await watch.until(spoken(opening.id), timeout, "greeting spoken")
        if voice:
            await asyncio.sleep(0.3)  # the ASR worker subscribes to the session's audio
        diffs: list[TurnDiff] = []
        replayed: dict[int, str] = {}
        for n, turn in enumerate(turns, start=1):
            original = inputs[turn["turn_id"]]
            note = None
            mark = watch.mark()
            if original.id in audio:
                await speak(rbus, sid, audio[original.id])

                def transcript(events: list[Event], mark: int = mark) -> str | None:
                    return next((e.id for e in events[mark:] if isinstance(e, TranscriptFinal)), None)

                try:
                    turn_id = await watch.until(transcript, min(timeout, 60), "transcript")
                except TimeoutError:
                    diffs.append(TurnDiff(n, side(turn, original_events), Side(input_type="transcript.final"),
                                          note="the replay's ASR made no transcript of this utterance"))
                    continue
            elif original.id in photos:
                typed, note = await _photo(rbus, sid, config, original.text, *photos[original.id])
                await rbus.publish(typed)
                turn_id = typed.id
            else:
                text = original.text
                if isinstance(original, TranscriptFinal):
                    note = "the utterance's audio was not stored: its transcript was sent as text"
                typed = UserText(session_id=sid, text=text, source="replay")
                await rbus.publish(typed)
                turn_id = typed.id
            replayed[n] = turn_id
            try:
                answer = await watch.until(final_answer(turn_id), timeout, "answer")
                said = any(isinstance(e, AssistantSentence) and e.turn_id == turn_id for e in watch.events)
                if tts and said and isinstance(answer, AssistantMessage):
                    with contextlib.suppress(TimeoutError):  # spoken to the end, as it was heard
                        await watch.until(spoken(turn_id), timeout, "spoken")
            except TimeoutError:
                note = f"no answer within {timeout:.0f} s"
            diffs.append(TurnDiff(n, side(turn, original_events), Side(), note))
        await asyncio.sleep(0.2)
        entries, _ = await load(rbus, "session", sid)
        replay_turns = {t["turn_id"]: t for t in fold_turns(entries)}
        replay_events = [e.event for e in entries if e.event is not None]
        for diff in diffs:
            turn_id = replayed.get(diff.n)
            if turn_id is not None and turn_id in replay_turns:
                diff.replay = side(replay_turns[turn_id], replay_events)
        return Report(session_id=sid, assistant_id=aid, llm=stack.llm, turns=diffs)
    finally:
        await sub.stop()


async def speak(rbus: Bus, sid: str, pcm: bytes) -> None:
    """The utterance as PCM16 frames, faster than real time (the VAD counts audio time), then
    silence so that the utterance ends."""
    step = RATE * CHUNK_MS // 1000 * 2
    data = pcm + bytes(RATE * TRAILING_SILENCE_MS // 1000 * 2)
    data += bytes(-len(data) % step)
    for at in range(0, len(data), step):
        await rbus.publish_core(audio_in(sid), data[at:at + step])
        await asyncio.sleep(0.005)
