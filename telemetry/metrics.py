"""Prometheus metrics: every metric vagent exposes is declared here, and observed from events.

Each event is observed where it is appended to the log (`appended`, called by the bus once
JetStream stored it, not for a deduplicated retry) and, for live events, where they are
published. An event is appended by exactly one process, so a metric counts it once whether
the edge and the actors share a process (`vagent up`) or not.

A turn's stage latencies run from its input to the event that ends the stage:

    transcript       end of speech → transcript.final          (asr)
    first_token      input → first assistant.delta             (dialogue)
    first_sentence   input → first assistant.sentence          (dialogue)
    first_audio      input → tts.started                       (tts)

where the input is the end of speech (`transcript.final`'s `speech_stopped_ts`, label
`input="voice"`) or the `user.text` itself (`input="text"`). A process learns a turn's input
when it appends it or consumes it (`consumed`), so a stage is measured by a process that saw
the input: all of them in `vagent up`; the dialogue always (it consumes every input); a tts
running alone does not see inputs, and its `first_audio` stays empty.

Labels are bounded: transports, actors, stages, reasons and providers are vagent's own
words; models are the configured ones; error codes and tool names (a model may invent one)
keep their first `MAX_VALUES` values and fold the rest into "other". No session, user or
turn id is ever a label.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from schemas import (
    AssistantDelta,
    AssistantMessage,
    AssistantSentence,
    Error,
    Event,
    SessionAdmitted,
    SessionRefused,
    SessionStarted,
    ToolResult,
    TranscriptFinal,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnStarted,
    UserText,
)
from telemetry.prices import Price, Prices

MAX_VALUES = 64  # distinct values of an open-ended label (error code, tool name) before "other"
OPEN_TURNS = 4096  # turns whose input time is remembered; the oldest is forgotten first

# Voice and LLM stages span tens of milliseconds to tens of seconds.
STAGE_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)

STAGE = Histogram("vagent_turn_stage_seconds",
                  "Time from a turn's input (end of speech, or the typed text) to the end of a stage",
                  ("stage", "input"), buckets=STAGE_BUCKETS)
TURNS = Counter("vagent_turns_total", "Turns the dialogue started", ("input",))
INTERRUPTIONS = Counter("vagent_interruptions_total", "Turns interrupted, by why", ("reason",))
ERRORS = Counter("vagent_errors_total", "error events recorded, by code and reporter",
                 ("code", "source"))
SESSIONS = Counter("vagent_sessions_total", "Sessions started (and resumed)", ("transport",))
SESSIONS_ACTIVE = Gauge("vagent_sessions_active", "Real-time sessions this edge holds",
                        ("transport",))
CONNECTIONS_ACTIVE = Gauge("vagent_connections_active",
                           "Real-time connections (WebSocket, WebRTC peers) this edge holds",
                           ("transport",))
LLM_TOKENS = Counter("vagent_llm_tokens_total", "LLM tokens, by provider, model and kind",
                     ("provider", "model", "kind"))
LLM_COST = Counter("vagent_llm_cost_total",
                   "LLM cost by the [[prices]] table, in its currency", ("provider", "model",
                                                                          "currency"))
AUDIO_SECONDS = Counter("vagent_audio_seconds_total",
                        "Speech heard (in: transcribed) and spoken (out: synthesized and played)",
                        ("direction", "provider"))
AUDIO_COST = Counter("vagent_audio_cost_total",
                     "Speech cost by the [[prices]] table (per minute), in its currency",
                     ("direction", "provider", "currency"))
TOOL_CALLS = Counter("vagent_tool_calls_total", "Tool results, by tool and outcome",
                     ("tool", "outcome"))
HANDLER = Histogram("vagent_handler_seconds", "Time an actor's handler took for one event",
                    ("actor", "outcome"), buckets=HANDLER_BUCKETS)
CONSUMER_PENDING = Gauge("vagent_consumer_pending",
                         "Events stored but not yet delivered to an actor's consumer", ("actor",))
CONSUMER_ACK_PENDING = Gauge("vagent_consumer_ack_pending",
                             "Events delivered to an actor and not yet acknowledged", ("actor",))
CONSUMER_REDELIVERED = Gauge("vagent_consumer_redelivered",
                             "Events delivered to an actor more than once, unacknowledged",
                             ("actor",))
CONSUMER_TERMINATED = Counter("vagent_consumer_terminated_total",
                              "Events an actor gave up on (dead letters it made)", ("actor",))
QUEUE_WAIT = Histogram("vagent_session_queue_seconds",
                       "How long a session waited for an ASR worker (those that waited), by "
                       "outcome: admitted or refused", ("outcome",),
                       buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0))
DEAD_LETTERS = Gauge("vagent_dead_letters", "Dead-letter records stored (DEADLETTER stream)")

METRIC_NAMES: tuple[str, ...] = tuple(
    m._name for m in (STAGE, TURNS, INTERRUPTIONS, ERRORS, SESSIONS, SESSIONS_ACTIVE,
                      CONNECTIONS_ACTIVE, LLM_TOKENS, LLM_COST, AUDIO_SECONDS, AUDIO_COST,
                      TOOL_CALLS, HANDLER,
                      CONSUMER_PENDING, CONSUMER_ACK_PENDING, CONSUMER_REDELIVERED,
                      CONSUMER_TERMINATED, QUEUE_WAIT, DEAD_LETTERS))


class _Telemetry(Protocol):
    @property
    def metrics(self) -> bool: ...
    @property
    def currency(self) -> str: ...


class Settings(Protocol):
    """What metrics read of a process's settings (settings.config.Config)."""

    @property
    def telemetry(self) -> _Telemetry: ...
    @property
    def prices(self) -> Sequence[Price]: ...


class _Bounded:
    """The first MAX_VALUES values of an open-ended label as they are; any later one "other"."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= MAX_VALUES:
            return "other"
        self._seen.add(value)
        return value


@dataclass(slots=True)
class _Turn:
    start_ns: int
    input: str  # voice | text
    done: set[str] = field(default_factory=set)


@dataclass
class _State:
    enabled: bool = True
    prices: Prices = field(default_factory=Prices)
    currency: str = "USD"
    turns: OrderedDict[str, _Turn] = field(default_factory=OrderedDict)
    voices: OrderedDict[str, str] = field(default_factory=OrderedDict)  # turn → who speaks it
    codes: _Bounded = field(default_factory=_Bounded)
    tools: _Bounded = field(default_factory=_Bounded)


_state = _State()


def configure(settings: Settings) -> None:
    """The process's `[telemetry] metrics`, currency and `[[prices]]`: read once at start."""
    _state.enabled = settings.telemetry.metrics
    _state.prices = Prices(settings.prices)
    _state.currency = settings.telemetry.currency


def enabled() -> bool:
    return _state.enabled


def price_of(provider: str, model: str) -> Price | None:
    """The price of `model` at `provider`: its own entry, else the provider's `*` entry."""
    return _state.prices.of(provider, model)


# --- events -------------------------------------------------------------------------------

def appended(event: Event) -> None:
    """`event` was appended to the log (or published live) by this process."""
    if _state.enabled:
        observer = _OBSERVERS.get(type(event))
        if observer is not None:
            observer(event)


def consumed(event: Event) -> None:
    """An actor of this process took `event` from its consumer: a turn's input is remembered."""
    if _state.enabled and isinstance(event, UserText | TranscriptFinal):
        _remember(event)


def _remember(event: UserText | TranscriptFinal) -> None:
    if event.id in _state.turns or not event.text.strip():  # an empty input opens no turn
        return
    if isinstance(event, TranscriptFinal):
        _state.turns[event.id] = _Turn(event.speech_stopped_ts or event.ts, "voice")
    else:
        _state.turns[event.id] = _Turn(event.ts, "text")
    while len(_state.turns) > OPEN_TURNS:
        _state.turns.popitem(last=False)


# The children of the histograms observed on every turn and event, found once: a label
# lookup costs as much as the observation itself.
@cache
def _stage_of(stage: str, input: str) -> Histogram:
    return STAGE.labels(stage, input)


@cache
def _handler_of(actor: str, outcome: str) -> Histogram:
    return HANDLER.labels(actor, outcome)


def _stage(turn_id: str | None, stage: str, ts: int) -> None:
    """The first time `stage` of the turn ends (later sentences, deltas and retries do not count)."""
    turn = _state.turns.get(turn_id or "")
    if turn is None or stage in turn.done:
        return
    turn.done.add(stage)
    _stage_of(stage, turn.input).observe(max(0, ts - turn.start_ns) / 1e9)


def _user_text(event: Event) -> None:
    assert isinstance(event, UserText)
    _remember(event)


def _transcript(event: Event) -> None:
    assert isinstance(event, TranscriptFinal)
    _remember(event)
    if event.speech_stopped_ts:
        _stage_of("transcript", "voice").observe(
            max(0, event.ts - event.speech_stopped_ts) / 1e9)
    if event.audio is not None and event.audio.duration_ms:
        heard = event.audio.duration_ms / 1000
    elif event.speech_started_ts and event.speech_stopped_ts:
        heard = max(0, event.speech_stopped_ts - event.speech_started_ts) / 1e9
    else:
        return
    _audio("in", event.provider or "unknown", heard)


def _audio(direction: Literal["in", "out"], provider: str, seconds: float) -> None:
    AUDIO_SECONDS.labels(direction, provider).inc(seconds)
    if price_of(provider, "*") is not None:
        AUDIO_COST.labels(direction, provider, _state.currency).inc(
            _state.prices.audio(provider, direction, seconds))


def _turn_started(event: Event) -> None:
    turn = _state.turns.get(event.turn_id or "") if isinstance(event, TurnStarted) else None
    TURNS.labels(turn.input if turn else "unknown").inc()


def _delta(event: Event) -> None:
    assert isinstance(event, AssistantDelta)
    _stage(event.turn_id, "first_token", event.ts)


def _sentence(event: Event) -> None:
    assert isinstance(event, AssistantSentence)
    _stage(event.turn_id, "first_sentence", event.ts)


def _tts_started(event: Event) -> None:
    assert isinstance(event, TtsStarted)
    _stage(event.turn_id, "first_audio", event.ts)
    if event.turn_id and event.provider:
        _state.voices[event.turn_id] = event.provider
        while len(_state.voices) > OPEN_TURNS:
            _state.voices.popitem(last=False)


def _tts_stopped(event: Event) -> None:
    assert isinstance(event, TtsStopped)
    if event.spoken_ms:
        provider = _state.voices.pop(event.turn_id or "", "unknown")
        _audio("out", provider, event.spoken_ms / 1000)


def _message(event: Event) -> None:
    assert isinstance(event, AssistantMessage)
    usage = event.usage
    if not (usage.prompt_tokens or usage.completion_tokens):
        return
    provider, model = event.provider or "unknown", event.model or "unknown"
    LLM_TOKENS.labels(provider, model, "prompt").inc(usage.prompt_tokens)
    LLM_TOKENS.labels(provider, model, "completion").inc(usage.completion_tokens)
    if price_of(provider, model) is not None:
        LLM_COST.labels(provider, model, _state.currency).inc(_state.prices.tokens(
            provider, model, usage.prompt_tokens, usage.completion_tokens))


def _interrupted(event: Event) -> None:
    assert isinstance(event, TurnInterrupted)
    INTERRUPTIONS.labels(event.reason).inc()


def _error(event: Event) -> None:
    assert isinstance(event, Error)
    ERRORS.labels(_state.codes(event.code), event.source or "unknown").inc()


def _tool_result(event: Event) -> None:
    assert isinstance(event, ToolResult)
    TOOL_CALLS.labels(_state.tools(event.name), "error" if event.is_error else "ok").inc()


def _session_started(event: Event) -> None:
    assert isinstance(event, SessionStarted)
    SESSIONS.labels(event.transport).inc()


def _queued(event: Event) -> None:
    assert isinstance(event, SessionAdmitted | SessionRefused)
    outcome = "admitted" if isinstance(event, SessionAdmitted) else "refused"
    QUEUE_WAIT.labels(outcome).observe(event.queued_ms / 1000)


_OBSERVERS: dict[type[Event], Callable[[Event], None]] = {
    UserText: _user_text, TranscriptFinal: _transcript, TurnStarted: _turn_started,
    AssistantDelta: _delta, AssistantSentence: _sentence, TtsStarted: _tts_started,
    TtsStopped: _tts_stopped,
    AssistantMessage: _message, TurnInterrupted: _interrupted, Error: _error,
    ToolResult: _tool_result, SessionStarted: _session_started, SessionAdmitted: _queued,
    SessionRefused: _queued,
}


# --- what is not an event ---------------------------------------------------------------

def handled(actor: str, outcome: str, seconds: float) -> None:
    """An actor's handler returned (outcome "ok"), raised ("error") or put the event back
    for later ("deferred": a full worker) after `seconds`."""
    if _state.enabled:
        _handler_of(actor, outcome).observe(seconds)


def terminated(actor: str) -> None:
    if _state.enabled:
        CONSUMER_TERMINATED.labels(actor).inc()


def consumer_state(actor: str, pending: int, ack_pending: int, redelivered: int) -> None:
    CONSUMER_PENDING.labels(actor).set(pending)
    CONSUMER_ACK_PENDING.labels(actor).set(ack_pending)
    CONSUMER_REDELIVERED.labels(actor).set(redelivered)


def dead_letters(count: int) -> None:
    DEAD_LETTERS.set(count)


def session_opened(transport: str) -> None:
    if _state.enabled:
        SESSIONS_ACTIVE.labels(transport).inc()


def session_closed(transport: str) -> None:
    if _state.enabled:
        SESSIONS_ACTIVE.labels(transport).dec()


def connection_opened(transport: str) -> None:
    if _state.enabled:
        CONNECTIONS_ACTIVE.labels(transport).inc()


def connection_closed(transport: str) -> None:
    if _state.enabled:
        CONNECTIONS_ACTIVE.labels(transport).dec()


# --- exposition ---------------------------------------------------------------------------

def exposition() -> tuple[bytes, str]:
    """The process's metrics in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


@dataclass
class MetricsServer:
    """`/metrics` on a port of its own, for a process without the edge (`vagent actor run`)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(port: int, host: str = "0.0.0.0") -> MetricsServer:
    server, thread = start_http_server(port, addr=host)
    return MetricsServer(server, thread)
