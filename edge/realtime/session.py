"""One client connection's side of a session, whatever its protocol.

A `SessionLink` records `session.started` (who, which assistant, which audio formats),
turns the client's input into events (`user.text`, `listen.*`, `turn.interrupted`,
`session.tools`, `tool.result`) and audio frames on `audio.in`, and hands the session's
events (durable and live) and its downlink audio to the transport. It keeps no
conversation state (the log has it), only which of its typed turns are still waiting for
their answer, for the turn limit (edge.realtime.limits.TurnLimit). Closing the link records
`session.ended`.

A client may resume its session within `RESUME_SECONDS` of leaving it: the log itself
says whether that is allowed (the session's owner, and when its last connection ended).
A session whose edge died never recorded its end; its lease (edge.realtime.leases) tells,
and it is ended then (`edge_lost`), so its client can resume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from bus.client import Bus, Message, Subscription
from bus.errors import BusError
from bus.log import last_event
from bus.subjects import audio_in, audio_out, session_events, session_live
from edge.errors import ApiError
from edge.realtime.leases import SessionLeases
from edge.realtime.limits import TurnLimit
from schemas import (
    AudioParams,
    DecodeError,
    Event,
    ListenStarted,
    ListenStopped,
    SessionEnded,
    SessionStarted,
    SessionTools,
    SessionToolSpec,
    ToolResult,
    TtsStarted,
    TurnInterrupted,
    UserText,
    decode,
    encode,
    new_id,
)
from schemas.session import SessionEvent
from telemetry import metrics, tracing

log = logging.getLogger("vagent.edge.session")
RESUME_SECONDS = 60.0
SEEN_IDS = 512  # recent event ids remembered per link
EventHandler = Callable[[Event], Awaitable[None]]
AudioHandler = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is on the line, once authenticated (all None: an anonymous local client)."""

    user_id: str | None = None
    assistant_id: str | None = None
    device_id: str | None = None
    client_id: str | None = None


class SessionLink:
    def __init__(self, bus: Bus, registry: LinkRegistry, caller: Caller, *, transport: str,
                 audio_in: AudioParams | None, audio_out: AudioParams | None,
                 turns: TurnLimit, on_event: EventHandler,
                 on_audio: AudioHandler | None = None, language: str | None = None,
                 echo_cancelled: bool | None = None) -> None:
        self.bus = bus
        self.registry = registry
        self.caller = caller
        self.transport = transport
        self.audio_in_params = audio_in
        self.audio_out_params = audio_out
        self.on_event = on_event
        self.on_audio = on_audio
        self.turns = turns
        self.language = language  # the client's own hint (schemas.SessionStarted.language)
        self.echo_cancelled = echo_cancelled  # the client's word on its speaker's echo (ditto)
        self.session_id = ""
        self.resumed = False
        self.closed = False
        self.ended = False  # an actor recorded session.ended (the user said goodbye)
        self._subs: list[Subscription] = []
        self._seen: OrderedDict[str, None] = OrderedDict()
        # A turn's tts.started, its traceparent and when it came, until its first frame is
        # sent (tracing on).
        self._first_audio: tuple[TtsStarted, str | None, int] | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def open(self, session_id: str | None = None) -> str:
        """Claim a new session id, or `session_id` to resume, and listen to it; the client
        is told the id before `start()` records the session's start."""
        self.resumed = False
        if session_id:
            await self.registry.release(session_id)  # a reconnect replaces a stale local link
            await check_resumable(self.bus, session_id, self.caller, self.registry.leases)
            self.resumed = True
        self.session_id = session_id or new_id()
        sid = self.session_id
        self._subs = [
            await self.bus.subscribe(session_events(sid), self._event),
            await self.bus.subscribe(session_live(sid), self._event),
        ]
        if self.on_audio is not None:
            self._subs.append(await self.bus.subscribe(audio_out(sid), self._audio))
        await self.bus.flush()  # subscribed before anything of the session can happen
        self.registry.add(self)
        return sid

    async def start(self) -> None:
        sid = self.session_id
        started = SessionStarted(
            session_id=sid, transport=self.transport, user_id=self.caller.user_id,
            assistant_id=self.caller.assistant_id, device_id=self.caller.device_id,
            client_id=self.caller.client_id, audio_in=self.audio_in_params,
            audio_out=self.audio_out_params, resumed=self.resumed, language=self.language,
            echo_cancelled=self.echo_cancelled)
        check_readable(started)
        # Held before it is stored: no stored start is ever without a holder.
        if self.registry.leases is not None:
            await self.registry.leases.hold(started)
        await self.bus.publish(started)

    async def close(self, reason: str) -> None:
        """Record `session.ended` (once: not again when an actor already ended the session)
        and stop listening."""
        if self.closed:
            return
        self.closed = True
        self.registry.remove(self)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.stop()
        self._subs = []
        leases = self.registry.leases
        if self.session_id and not self.ended:
            ended = SessionEnded(session_id=self.session_id, reason=reason)
            try:
                await self.bus.publish(ended)
            except BusError:
                log.warning("session.ended not recorded: NATS unreachable",
                            extra={"session": self.session_id, "reason": reason})
                if leases is not None:
                    leases.unrecorded(ended)  # the lease stays until the end is recorded
                return
        if self.session_id and leases is not None:
            await leases.release(self.session_id)

    # --- client → session ---------------------------------------------------------------

    async def text(self, text: str, source: str = "text") -> UserText:
        """A typed turn; ApiError (429 `too_many_turns`) beyond the session's turn limit."""
        event = UserText(session_id=self.session_id, text=text, source=source)
        self.turns.admit(event.id, len(text))
        try:
            # The turn's trace begins where its text arrived.
            with tracing.span("edge user.text", None, role="edge", kind=tracing.SERVER,
                              attributes=self._span_attributes(event)) as span:
                await self._publish(event, tracing.traceparent(span) if span else None)
        except BaseException:
            self.turns.withdraw(event.id)
            raise
        return event

    async def audio(self, payload: bytes) -> None:
        await self.bus.publish_core(audio_in(self.session_id), payload)

    async def listen_start(self, mode: Literal["auto", "manual", "realtime"] = "auto") -> None:
        await self._publish(ListenStarted(session_id=self.session_id, mode=mode))

    async def listen_stop(self) -> None:
        await self._publish(ListenStopped(session_id=self.session_id))

    async def abort(self) -> None:
        """The client stopped the answer: every actor of the turn stops (turn_id None: the
        current turn, whichever it is)."""
        await self._publish(TurnInterrupted(session_id=self.session_id, reason="abort"))

    async def tools(self, specs: list[SessionToolSpec], source: str = "device") -> None:
        await self._publish(SessionTools(session_id=self.session_id, tools=specs, source=source))

    async def tool_result(self, call_id: str, name: str, content: str, *, turn_id: str | None,
                          is_error: bool = False, causation_id: str | None = None) -> None:
        await self._publish(ToolResult(session_id=self.session_id, turn_id=turn_id, call_id=call_id,
                                       name=name, content=content, is_error=is_error,
                                       causation_id=causation_id))

    async def _publish(self, event: SessionEvent, traceparent: str | None = None) -> None:
        """Append an event made of client input, once the actors can read it back."""
        check_readable(event)
        await self.bus.publish(event, traceparent=traceparent)

    def _span_attributes(self, event: Event) -> dict[str, Any]:
        if not tracing.enabled():
            return {}
        return {**tracing.event_attributes(event), "vagent.transport": self.transport}

    # --- session → client ---------------------------------------------------------------

    async def _event(self, msg: Message) -> None:
        try:
            event = decode(msg.data)
        except DecodeError:
            return
        # A publish retried after a lost acknowledgement is stored once (its id dedupes it)
        # but reaches subscribers twice: the client sees each event once.
        if event.id in self._seen:
            return
        self._seen[event.id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        if isinstance(event, SessionEnded):
            self.ended = True
        elif isinstance(event, TtsStarted) and tracing.enabled():
            # Its audio follows: the first frame sent closes the turn's trace.
            self._first_audio = (event, msg.headers.get("traceparent"), time.time_ns())
        self.turns.seen(event)
        try:
            await self.on_event(event)
        except Exception:
            log.exception("the transport failed to deliver an event", extra={"session": self.session_id})

    async def _audio(self, msg: Message) -> None:
        assert self.on_audio is not None
        try:
            await self.on_audio(msg.data)
        except Exception:
            log.exception("the transport failed to deliver audio", extra={"session": self.session_id})
        if self._first_audio is not None:
            started, parent, seen_ns = self._first_audio
            self._first_audio = None
            tracing.record("edge first audio", parent, seen_ns, role="edge",
                           kind=tracing.SERVER, attributes={
                               **self._span_attributes(started), "vagent.bytes": len(msg.data)})


def check_readable(event: Event) -> None:
    """Refuse (422 `invalid_input`) an event that would not decode in the actors.

    msgspec does not check types when a Struct is built, so a value the client sent that
    got past the protocol's own checks (a float sample rate, a lone surrogate) would be
    stored, then fail to decode in every actor: dead letters, a session nobody serves.
    Decoding it here, as the actors will, keeps such an event out of the log."""
    try:
        data = encode(event)
        decode(data)
    except (DecodeError, ValueError, TypeError, OverflowError) as exc:
        log.warning("an event made of client input is unreadable: not appended",
                    extra={"type": event.type, "reason": str(exc)})
        raise ApiError(422, "invalid_input", f"{event.type} would not be readable: {exc}") from None


async def check_resumable(bus: Bus, session_id: str, caller: Caller,
                          leases: SessionLeases | None = None) -> None:
    """A session may be resumed by its own caller within RESUME_SECONDS of its last
    connection's end. Read from the log's last `session.started` and `session.ended`; one
    the log says connected is ended first if its edge is gone (`leases`)."""
    started = await last_event(bus, "session", session_id, "session.started")
    if not isinstance(started, SessionStarted) or (started.user_id, started.device_id) != (
            caller.user_id, caller.device_id):
        # Someone else's session answers like one that never existed.
        raise ApiError(404, "session_not_found", f"no session {session_id!r} to resume")
    ended = await last_event(bus, "session", session_id, "session.ended")
    if ended is None or ended.ts < started.ts:
        if leases is None or not await leases.end_if_lost(started):
            raise ApiError(409, "session_active", "this session is connected elsewhere")
        return  # ended just now: well within the window
    if time.time_ns() - ended.ts > RESUME_SECONDS * 1e9:
        raise ApiError(410, "session_expired",
                       f"the session ended over {RESUME_SECONDS:.0f} s ago: start a new one")


class LinkRegistry:
    """The links this edge process holds: for limits, replacing a stale link on reconnect,
    and telling every client when the edge shuts down."""

    def __init__(self, leases: SessionLeases | None = None) -> None:
        self.leases = leases  # which sessions this edge holds, told to every edge through NATS
        self._links: dict[str, SessionLink] = {}
        self._closers: dict[int, Callable[[str], Awaitable[None]]] = {}

    def __len__(self) -> int:
        return len(self._links)

    def add(self, link: SessionLink) -> None:
        replaced = self._links.get(link.session_id)
        if replaced is not link:
            if replaced is not None:
                metrics.session_closed(replaced.transport)
            metrics.session_opened(link.transport)
        self._links[link.session_id] = link

    def remove(self, link: SessionLink) -> None:
        self._closers.pop(id(link), None)
        if self._links.get(link.session_id) is link:
            del self._links[link.session_id]
            metrics.session_closed(link.transport)

    def on_close(self, link: SessionLink, closer: Callable[[str], Awaitable[None]]) -> None:
        """How to end the link's connection (with a reason) when the edge must."""
        self._closers[id(link)] = closer

    async def release(self, session_id: str) -> None:
        """A client reconnecting with this session id: a link still held here is stale."""
        link = self._links.get(session_id)
        if link is not None:
            await self._end(link, "replaced")

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(self._end(link, reason) for link in list(self._links.values())),
                             return_exceptions=True)

    async def _end(self, link: SessionLink, reason: str) -> None:
        closer = self._closers.pop(id(link), None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer(reason)
        await link.close(reason)
