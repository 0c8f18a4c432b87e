"""The one declarative table of JetStream streams, KV and Object Store buckets."""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.subjects import aggregate_events

DAY = 86_400.0


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    max_age: float = 0.0  # seconds; 0 keeps forever
    duplicate_window: float = 600.0  # seconds in which a repeated Nats-Msg-Id is dropped
    atomic: bool = True  # allow atomic batch appends


@dataclass(frozen=True)
class BucketSpec:
    name: str
    description: str
    ttl: float = 0.0  # seconds; 0 keeps forever
    history: int = 1
    per_key_ttl: bool = False  # each write may carry its own TTL (bus.kv `ttl=`)
    extra: dict[str, object] = field(default_factory=dict)


# Advisories that mark a message a consumer gave up on; JetStream stores them itself.
DEAD_LETTER_SUBJECTS = (
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
)

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("SESSIONS", (aggregate_events("session"),), "every session's event log"),
    StreamSpec("USERS", (aggregate_events("user"),), "account and device events"),
    StreamSpec("ASSISTANTS", (aggregate_events("assistant"),), "assistant persona and settings"),
    StreamSpec("DOCS", (aggregate_events("doc"),), "document lifecycle"),
    StreamSpec(
        "DEADLETTER", DEAD_LETTER_SUBJECTS, "messages a consumer terminated or gave up on",
        max_age=30 * DAY, atomic=False,
    ),
)

KV_BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec("vagent_actors", "actor heartbeats for the health probe", ttl=15.0),
    BucketSpec("vagent_tools", "tool catalog: name -> JSON spec, kept by the tools actor"),
    # Which edge process holds each connected session, and which edges are alive: a session
    # whose edge died is ended (edge_lost) instead of being refused as active for ever.
    BucketSpec("vagent_edges", "edge process heartbeats", ttl=15.0),
    BucketSpec("vagent_session_leases", "session id -> the edge process holding its connection",
               per_key_ttl=True),
    # Identity secrets stay out of the event log, which is replayed, tailed and projected.
    BucketSpec("vagent_credentials", "user id -> argon2id password hash"),
    BucketSpec("vagent_emails", "sha256(email) -> user id: the unique email index"),
    BucketSpec("vagent_devices", "sha256(device id) -> binding and its token id"),
    BucketSpec("vagent_tokens", "refresh tokens, revocations, one-time codes, login failures",
               per_key_ttl=True),
    BucketSpec("vagent_idempotency", "Idempotency-Key -> stored response", ttl=DAY,
               per_key_ttl=True),
)

OBJECT_BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec("docs", "uploaded documents"),
    BucketSpec("audio", "each utterance's audio, referenced from its events"),
    BucketSpec("images", "photos users sent, referenced from their `user.image` events"),
)

STREAM_BY_AGGREGATE = {"session": "SESSIONS", "user": "USERS", "assistant": "ASSISTANTS",
                       "doc": "DOCS"}


def stored_part(subject: str) -> tuple[str, str] | None:
    """The stream that stores part of `subject`, and the filter for that part.

    'vagent.session.s1.>' also matches live and audio subjects; the stream only has
    'vagent.session.s1.evt.>', so that is what its history is read with.
    """
    tokens = subject.split(".")
    for spec in STREAMS:
        for pattern in spec.subjects:
            merged = _intersect(tokens, pattern.split("."))
            if merged is not None:
                return spec.name, ".".join(merged)
    return None


def _intersect(a: list[str], b: list[str]) -> list[str] | None:
    out: list[str] = []
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == ">":
            return out + b[i:]
        if y == ">":
            return out + a[i:]
        if x is None or y is None:
            return None
        if x == "*":
            out.append(y)
        elif y in ("*", x):
            out.append(x)
        else:
            return None
    return out
