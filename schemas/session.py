"""A session's events (DESIGN.md §3). Stored in stream SESSIONS, except the
live-only `assistant.delta` and `transcript.partial`."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from schemas.base import SessionEvent


class AudioParams(msgspec.Struct, omit_defaults=True):
    format: Literal["opus", "pcm16"] = "opus"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration: int = 60


class Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BlobRef(msgspec.Struct, omit_defaults=True):
    """Where a piece of audio or a photo is kept (Object Store bucket + name)."""

    bucket: str
    name: str
    format: str = "pcm16"
    sample_rate: int = 16000
    duration_ms: int = 0


class SessionStarted(SessionEvent, tag="session.started", kw_only=True):
    transport: str = "nats"
    user_id: str | None = None
    assistant_id: str | None = None
    device_id: str | None = None
    client_id: str | None = None
    audio_in: AudioParams | None = None
    audio_out: AudioParams | None = None
    resumed: bool = False  # a client reconnected to a session it had left (within 60 s)
    # The language the client says it speaks (a xiaozhi hello's `language`: zh, en); heeded
    # for sessions of the system's default assistant, whose own language is nobody's choice.
    language: str | None = None
    # The client cancels the echo of its own speaker (a xiaozhi hello's `features.aec`);
    # None: not said.
    echo_cancelled: bool | None = None


class SessionEnded(SessionEvent, tag="session.ended", kw_only=True):
    # client_closed, client_goodbye, user_exit (the user said goodbye), idle (a xiaozhi
    # device with no speech or text for edge.idle_timeout), error, edge_lost, or the refusal's
    # code that closed the connection (too_many_sessions, frame_too_large, rate_limited…),
    # or busy (session.refused: no ASR worker had room for it)
    reason: str = "client_closed"


class SessionQueued(SessionEvent, tag="session.queued", kw_only=True):
    """Every ASR worker was full when the session started: it waits for a place (its audio
    is not heard meanwhile), and is admitted or refused within `max_wait_ms`."""

    position: int  # sessions waiting at the worker that saw it, this one included
    max_wait_ms: int


class SessionAdmitted(SessionEvent, tag="session.admitted", kw_only=True):
    """A session that waited (`session.queued`) is heard now."""

    queued_ms: int  # from its session.started


class SessionRefused(SessionEvent, tag="session.refused", kw_only=True):
    """A session that waited longer than `[asr] max_queue_ms`: its edge tells the client and
    ends it (`session.ended` with this reason)."""

    reason: str  # busy
    retry_after_s: int
    queued_ms: int


class ListenStarted(SessionEvent, tag="listen.started", kw_only=True):
    mode: Literal["auto", "manual", "realtime"] = "auto"


class ListenStopped(SessionEvent, tag="listen.stopped", kw_only=True):
    pass


class SpeechStarted(SessionEvent, tag="speech.started", kw_only=True):
    audio_ms: int = 0  # offset in the session's inbound audio


# What ended an utterance: `silence` alone (the detector `silence`, or no model answer),
# the turn `model` judging it complete, `max_wait` (judged incomplete, but the silence
# went on past the assistant's `incomplete_max_ms`), `manual` (push to talk's
# listen.stop) or `max_length` (`[asr.vad] max_utterance_ms`).
TurnEndReason = Literal["silence", "model", "max_wait", "manual", "max_length"]


class TurnEnd(msgspec.Struct, omit_defaults=True):
    """Why an utterance ended when it did (on `speech.stopped`)."""

    by: TurnEndReason
    probability: float | None = None  # the turn model's last P(complete), if it was asked
    silence_ms: int = 0  # the silence heard after the last speech before the end


class SpeechStopped(SessionEvent, tag="speech.stopped", kw_only=True):
    audio_ms: int = 0
    duration_ms: int = 0
    audio: BlobRef | None = None
    end: TurnEnd | None = None  # None in older logs


class TranscriptPartial(SessionEvent, tag="transcript.partial", kw_only=True):
    text: str


class TranscriptFinal(SessionEvent, tag="transcript.final", kw_only=True):
    text: str
    language: str | None = None
    provider: str | None = None
    audio: BlobRef | None = None
    speech_started_ts: int | None = None
    speech_stopped_ts: int | None = None


class UserText(SessionEvent, tag="user.text", kw_only=True):
    text: str
    source: str = "text"  # text | detect | cli | replay | image (a /ws photo's question and description)


class UserImage(SessionEvent, tag="user.image", kw_only=True):
    """A photo the user sent: a device's camera (answered by its camera tool's call) or
    `/ws` (answered by a turn of its own)."""

    image: BlobRef  # format: jpeg, png or webp
    mime: str
    size: int
    source: str  # ws | device
    question: str = ""


class TurnStarted(SessionEvent, tag="turn.started", kw_only=True):
    input_id: str | None = None  # the user.text / transcript.final that opened the turn


class AssistantDelta(SessionEvent, tag="assistant.delta", kw_only=True):
    text: str
    index: int = 0


class AssistantSentence(SessionEvent, tag="assistant.sentence", kw_only=True):
    text: str  # what is spoken
    display_text: str | None = None  # what is shown, when it differs (markdown, emoji)
    index: int = 0
    ttfs_ms: float | None = None  # from turn start, on the first sentence


class ToolCallRef(msgspec.Struct, omit_defaults=True):
    call_id: str
    name: str
    arguments: str = "{}"


class AssistantMessage(SessionEvent, tag="assistant.message", kw_only=True):
    """The final answer of a turn. v2 groups token counts into `usage`;
    v1 carried them flat as `prompt_tokens` / `completion_tokens`."""

    v: int = 2
    text: str
    model: str | None = None
    provider: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    ttft_ms: float | None = None
    total_ms: float | None = None
    interrupted: bool = False
    tool_calls: list[ToolCallRef] = msgspec.field(default_factory=list)
    # What the model wrote that nobody saw or heard: tool calls written as text (taken out
    # of the answer), the original of a call that was repaired, or of a call that was refused.
    withheld: str | None = None


class ToolCall(SessionEvent, tag="tool.call", kw_only=True):
    call_id: str
    name: str
    arguments: str = "{}"  # JSON text, as the model wrote it
    # Who answers: "tools" (the tools actor), "device" (the session's edge), or "dialogue"
    # (a call to a tool that was not offered: the dialogue answers it with an error).
    route: str = "tools"


class SessionToolSpec(msgspec.Struct, omit_defaults=True):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}})


class SessionTools(SessionEvent, tag="session.tools", kw_only=True):
    """Tools only this session has (a device's MCP tools, listed by the edge): they join
    the dialogue's tool list for the session, and their calls are routed back to the edge.
    The latest event replaces the earlier list."""

    tools: list[SessionToolSpec] = msgspec.field(default_factory=list)
    source: str = "device"


class ToolResult(SessionEvent, tag="tool.result", kw_only=True):
    call_id: str
    name: str
    content: str
    is_error: bool = False


class TtsStarted(SessionEvent, tag="tts.started", kw_only=True):
    provider: str | None = None  # who speaks the turn (its first sentence): piper, kokoro…
    voice: str | None = None


class TtsSentence(SessionEvent, tag="tts.sentence", kw_only=True):
    text: str
    index: int = 0
    offset_ms: int = 0  # where this sentence starts in the turn's outbound audio
    duration_ms: int = 0


class TtsStopped(SessionEvent, tag="tts.stopped", kw_only=True):
    spoken_ms: int = 0
    audio: BlobRef | None = None  # what the listener heard; None in older logs or if not stored


InterruptReason = Literal["barge_in", "abort", "new_input", "session_ended"]


class TurnInterrupted(SessionEvent, tag="turn.interrupted", kw_only=True):
    reason: InterruptReason = "abort"
    spoken_text: str | None = None


class TurnPaused(SessionEvent, tag="turn.paused", kw_only=True):
    """Speech over the assistant (`turn_id`): its audio pauses until the words decide, a
    `turn.resumed` or a `turn.interrupted` for the same turn."""

    audio_ms: int = 0  # where the speech began in the session's inbound audio


# no_words: nothing was transcribed (a cough, a noise); backchannel: only an "mhm", "ok",
# "嗯" (the assistant's `backchannels`); timeout: no words within
# `false_interruption_timeout_ms`; echo: the assistant's own voice coming back.
ResumeReason = Literal["no_words", "backchannel", "timeout", "echo"]


class TurnResumed(SessionEvent, tag="turn.resumed", kw_only=True):
    reason: ResumeReason = "no_words"
    paused_ms: int = 0  # how long the assistant was silent


IgnoreReason = Literal["backchannel", "noise", "echo"]


class SpeechIgnored(SessionEvent, tag="speech.ignored", kw_only=True):
    """An utterance over the assistant's speech that is not a turn (`turn_id`: the
    assistant's turn it was heard over), kept so the log says what was heard."""

    reason: IgnoreReason = "noise"
    text: str = ""
    speech_ms: int = 0


class Error(SessionEvent, tag="error", kw_only=True):
    code: str
    message: str
    retryable: bool = False
    source: str | None = None  # the actor or edge that reported it


SESSION_EVENTS: tuple[type[SessionEvent], ...] = (
    SessionStarted, SessionEnded, SessionQueued, SessionAdmitted, SessionRefused, ListenStarted,
    ListenStopped, SpeechStarted, SpeechStopped,
    TranscriptPartial, TranscriptFinal, UserText, UserImage, TurnStarted, AssistantDelta, AssistantSentence,
    AssistantMessage, ToolCall, ToolResult, SessionTools, TtsStarted, TtsSentence, TtsStopped,
    TurnInterrupted, TurnPaused, TurnResumed, SpeechIgnored,
    Error,
)

# Derivable, high-rate events: published on `…live.<type>` (core NATS), never in the log.
LIVE_ONLY: frozenset[str] = frozenset({"assistant.delta", "transcript.partial"})
