"""Every NATS subject vagent uses (DESIGN.md §2), built in one place."""

from __future__ import annotations

from schemas import Event, check_token

PREFIX = "vagent"


def session_events(session_id: str = "*") -> str:
    """Wildcard over one session's durable log (or every session's, by default)."""
    return f"{PREFIX}.session.{_id(session_id)}.evt.>"


def session_live(session_id: str = "*") -> str:
    """Wildcard over one session's live (derivable, unstored) events."""
    return f"{PREFIX}.session.{_id(session_id)}.live.>"


def session_all(session_id: str) -> str:
    """Everything about one session: its log, live events and audio."""
    return f"{PREFIX}.session.{_id(session_id)}.>"


def event_type_filter(aggregate: str, event_type: str) -> str:
    """One event type across every aggregate of a kind, e.g. every session's user.text."""
    return f"{PREFIX}.{aggregate}.*.evt.{event_type}"


def live(session_id: str, event_type: str) -> str:
    return f"{PREFIX}.session.{_id(session_id)}.live.{event_type}"


def audio_in(session_id: str) -> str:
    return f"{PREFIX}.session.{_id(session_id)}.audio.in"


def audio_out(session_id: str) -> str:
    return f"{PREFIX}.session.{_id(session_id)}.audio.out"


def aggregate_events(aggregate: str, aggregate_id: str = "*") -> str:
    """Wildcard over one aggregate's log (or every aggregate's of that kind, by default)."""
    return f"{PREFIX}.{aggregate}.{_id(aggregate_id)}.evt.>"


def subject_of(event: Event) -> str:
    """The subject an event is stored under: its aggregate's log, one subject per type."""
    aggregate_id = check_token(event.aggregate + " id", event.aggregate_id)
    return f"{PREFIX}.{event.aggregate}.{aggregate_id}.evt.{event.type}"


def event_subject(aggregate: str, aggregate_id: str, event_type: str) -> str:
    """The subject of one event type of one aggregate."""
    return f"{PREFIX}.{aggregate}.{_id(aggregate_id)}.evt.{event_type}"


def query(name: str) -> str:
    """Request/reply subject of a read-model query served by the projections."""
    return f"{PREFIX}.query.{name}"


def knowledge_search() -> str:
    """Request/reply: a hybrid search of the knowledge base, answered by the tools actor."""
    return f"{PREFIX}.svc.knowledge.search"


def control(name: str) -> str:
    return f"{PREFIX}.ctl.{name}"


def _id(value: str) -> str:
    return value if value == "*" else check_token("id", value)
