"""The assistant a session talks to, as its read model (`assistants`) holds it.

A session names its assistant in `session.started`; sessions that name none (the CLI's
`say` and `chat`) get the system's default assistant. Profiles are cached a few
seconds, so an edit applies to the next turns without a query per turn.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec

from bus.client import Bus
from bus.log import Entry
from domain.language import SPOKEN, Spoken, reply_language, session_language, text_language
from projections.assistants import settings_of
from projections.client import QueryError, run_query
from schemas import (
    DEFAULT_ASSISTANT_ID,
    AssistantSettings,
    Event,
    SessionStarted,
    TranscriptFinal,
    UserText,
)

log = logging.getLogger("vagent.assistant")
CACHE_SECONDS = 5.0


class AssistantProfile(AssistantSettings, kw_only=True):
    assistant_id: str
    owner_id: str | None = None


def session_assistant_id(events: list[Event | None]) -> str:
    started = next((e for e in reversed(events) if isinstance(e, SessionStarted)), None)
    return (started.assistant_id if started else None) or DEFAULT_ASSISTANT_ID


def answer_language(profile: AssistantProfile | None, events: list[Event | None],
                    turn_id: str | None = None) -> Spoken:
    """The language a session is answered in (domain.language): its assistant's, the
    client's hint for the default assistant, or for `auto` the language of the user's input
    that opened `turn_id` (else of their latest input), by its transcript's language or its
    script."""
    started = next((e for e in reversed(events) if isinstance(e, SessionStarted)), None)
    language = session_language(profile.language if profile else "en",
                                profile.assistant_id if profile else session_assistant_id(events),
                                started.language if started else None)
    latest: str | None = None
    if language == "auto":
        inputs = [e for e in events if isinstance(e, UserText | TranscriptFinal)]
        upto = next((i for i, e in enumerate(inputs) if e.id == turn_id), len(inputs) - 1)
        for said in reversed(inputs[:upto + 1]):
            heard = said.language if isinstance(said, TranscriptFinal) else None
            latest = heard if heard in SPOKEN else text_language(said.text)
            if latest is not None:
                break
    return reply_language(language, latest)


class AssistantDirectory:
    def __init__(self, bus: Bus, data_dir: Path | None) -> None:
        """`data_dir`: where the read models' file is read when no service answers."""
        self.bus = bus
        self.data_dir = data_dir
        self._cache: dict[str, tuple[float, AssistantProfile | None]] = {}
        self._warned = False

    async def for_session(self, entries: list[Entry]) -> AssistantProfile | None:
        return await self.for_events([e.event for e in entries])

    async def for_events(self, events: list[Event | None]) -> AssistantProfile | None:
        return await self.get(session_assistant_id(events))

    async def get(self, assistant_id: str) -> AssistantProfile | None:
        """The profile, or None when it does not exist or no read model answers (the
        actor then uses its configured defaults)."""
        cached = self._cache.get(assistant_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        profile = await self._read(assistant_id, fresh=False)
        if profile is None:  # created a moment ago? wait for the read model once
            profile = await self._read(assistant_id, fresh=True)
        self._cache[assistant_id] = (time.monotonic() + CACHE_SECONDS, profile)
        return profile

    async def _read(self, assistant_id: str, *, fresh: bool) -> AssistantProfile | None:
        try:
            columns, rows = await run_query(self.bus, self.data_dir, "assistant_settings",
                                            {"assistant_id": assistant_id}, fresh=fresh)
        except QueryError as exc:  # no service answers and the file cannot be read either
            if not self._warned:
                self._warned = True
                log.warning("no assistants read model: using the configured defaults",
                            extra={"error": str(exc)})
            return None
        if not rows:
            return None
        row = dict(zip(columns, rows[0], strict=True))
        row.update(settings_of(row))
        return msgspec.convert({k: v for k, v in row.items() if v is not None and k in FIELDS},
                               AssistantProfile)


FIELDS = set(AssistantProfile.__struct_fields__)
