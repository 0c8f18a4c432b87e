"""Session events seen on core NATS the moment they are published: how an actor learns of
an interruption, a new input or a session's end while its durable queue for that session
still waits behind the event in hand.

Core NATS delivers a publish whether or not JetStream stores it, and may do so before it
does: what is seen here is a hint, to be confirmed in the log where it matters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from bus.client import Bus, Message, Subscription
from bus.subjects import event_type_filter, session_events
from schemas import DecodeError, Event, decode

OnEvent = Callable[[Event], Awaitable[None]]


class Watch:
    """`on_event` for every published event of `types`, of one session or of all of them."""

    def __init__(self, bus: Bus, types: Collection[str], on_event: OnEvent, *,
                 session_id: str | None = None) -> None:
        self.bus = bus
        self.types = frozenset(types)
        self.on_event = on_event
        self.session_id = session_id
        self._subs: list[Subscription] = []

    async def start(self) -> Watch:
        if self.session_id is not None:
            # One subscription: the session's events arrive in the order they were published.
            subjects = [session_events(self.session_id)]
        else:
            # One per type: a worker is not sent every event of every session.
            subjects = [event_type_filter("session", t) for t in sorted(self.types)]
        self._subs = [await self.bus.subscribe(s, self._deliver) for s in subjects]
        return self

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.stop()

    async def _deliver(self, msg: Message) -> None:
        if msg.subject.rpartition(".evt.")[2] not in self.types:
            return
        try:
            event = decode(msg.data)
        except DecodeError:
            return
        await self.on_event(event)
