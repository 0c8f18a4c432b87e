"""The REST API's request and response bodies: msgspec Structs, which both validate
requests and give the OpenAPI document its schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from domain.devices import Activation
from domain.tokens import TokenPair
from schemas import ASSISTANT_SETTINGS, TOKEN_PATTERN, AssistantSettings, Language, Role, TurnSettings

Email = Annotated[str, Meta(max_length=254, examples=["ada@example.com"])]
Password = Annotated[str, Meta(min_length=1, max_length=1024)]
Name = Annotated[str, Meta(min_length=1, max_length=100)]
Text = Annotated[str, Meta(max_length=20_000)]
# Spoken whole at every session's start, before the user can say a word: a sentence or
# two, not a speech (500 characters is ~30 s of speech).
GREETING_MAX_CHARS = 500
Greeting = Annotated[str, Meta(max_length=GREETING_MAX_CHARS)]
Short = Annotated[str, Meta(min_length=1, max_length=128)]
Names = Annotated[list[Annotated[str, Meta(min_length=1, max_length=128)]], Meta(max_length=64)]
# An id as the event log spells them (schemas.base._TOKEN): no dots, wildcards or spaces,
# which would address other subjects than the one meant.
ID_PATTERN = TOKEN_PATTERN  # every id is a subject token
Id = Annotated[str, Meta(pattern=ID_PATTERN, examples=["01J9ZQ4V7C2M8K3N5P6R7S8T9V"])]
# Tokens and codes are printable ASCII (codes may come with the spaces a person typed).
TokenText = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[!-~]+$")]
CodeText = Annotated[str, Meta(min_length=1, max_length=16, pattern=r"^[ -~]+$")]

__all__ = ["Activation", "TokenPair"]


class Register(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    display_name: Name | None = None


class Login(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class Refresh(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: TokenText


class Logout(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: TokenText | None = None  # also end the login this refresh token belongs to


class VerifyEmail(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, Meta(min_length=1, max_length=16)]


class User(msgspec.Struct):
    user_id: str
    email: str
    display_name: str | None
    email_verified: bool
    locked: bool
    default_assistant_id: str | None
    created_at: str  # ISO 8601, UTC
    role: Role = "user"  # operator: may read everyone's analytics


# Each setting's limits; the settings themselves, with their defaults, are AssistantSettings.
SETTING_LIMITS: dict[str, Any] = {
    "name": Name, "persona": Text, "greeting": Greeting, "voice": Short, "llm": Short, "asr": Short,
    "tts": Short, "tools": Names, "documents": Names, "language": Language, "turn": TurnSettings,
}
if tuple(SETTING_LIMITS) != ASSISTANT_SETTINGS:
    raise TypeError(f"SETTING_LIMITS names {tuple(SETTING_LIMITS)}, the settings are {ASSISTANT_SETTINGS}")
_SETTINGS = msgspec.structs.fields(AssistantSettings)


def _default(setting: msgspec.structs.FieldInfo) -> Any:
    if setting.default_factory is not msgspec.NODEFAULT:
        return msgspec.field(default_factory=setting.default_factory)
    return setting.default


def _limited(setting: msgspec.structs.FieldInfo) -> Any:
    limited = SETTING_LIMITS[setting.name]
    return limited | None if setting.default is None else limited


def _group_patch(group: type[msgspec.Struct]) -> Any:
    """A PATCH body for a group of settings: only the fields given change, and one given as
    null goes back to the configuration's."""
    return msgspec.defstruct(
        f"{group.__name__}Patch",
        [(f.name, f.type | msgspec.UnsetType, msgspec.UNSET) for f in msgspec.structs.fields(group)],
        module=__name__, forbid_unknown_fields=True, omit_defaults=True,
        namespace={"__doc__": f"Some of {group.__name__}: the fields given change, null sets one "
                              "back to the configuration's, the others keep their values."})


TurnSettingsPatch = _group_patch(TurnSettings)
# A group of settings is changed field by field, not replaced whole.
PATCH_LIMITS: dict[str, Any] = {**SETTING_LIMITS, "turn": TurnSettingsPatch}


AssistantCreate = msgspec.defstruct(
    "AssistantCreate", [(s.name, _limited(s), _default(s)) for s in _SETTINGS],
    module=__name__, forbid_unknown_fields=True)
# `greeting: null` clears it, so only leaving it out leaves it (UNSET).
AssistantPatch = msgspec.defstruct(
    "AssistantPatch",
    [(s.name, PATCH_LIMITS[s.name] | msgspec.UnsetType | None, msgspec.UNSET) if s.name == "greeting"
     else (s.name, PATCH_LIMITS[s.name] | None, None) for s in _SETTINGS],
    module=__name__, forbid_unknown_fields=True, omit_defaults=True,
    namespace={"__doc__": "Only the fields given change; `greeting: null` clears the greeting (none "
                          "is spoken); within `turn`, only the turn settings given change, and "
                          "one given as null goes back to the configuration's.\n    For the other "
                          "fields null is the same as leaving them out."})


def patch_changes(body: msgspec.Struct) -> dict[str, Any]:
    """What an AssistantPatch changes, as domain.assistants.Assistants.update takes it: the
    settings given (greeting None: clear it), `turn` as its fields given (None: the
    configuration's)."""
    fields = msgspec.structs.asdict(body)
    changed = {k: v for k, v in fields.items() if v is not None and v is not msgspec.UNSET}
    if fields["greeting"] is None:  # null, not left out: clear it
        changed["greeting"] = None
    if "turn" in changed:
        changed["turn"] = {k: v for k, v in msgspec.structs.asdict(changed["turn"]).items()
                           if v is not msgspec.UNSET}
    return changed


Assistant = msgspec.defstruct(
    "Assistant", [("assistant_id", str), *((s.name, s.type) for s in _SETTINGS),
                  ("created_at", str), ("updated_at", str)],
    module=__name__)


class AssistantPage(msgspec.Struct):
    items: list[Assistant]  # type: ignore[valid-type]  # a class made at runtime (defstruct), read by msgspec
    next_cursor: str | None


class ActivationRequest(msgspec.Struct, forbid_unknown_fields=True):
    # Device-Id: the device's MAC; it becomes part of subjects and keys, so the schema says
    # the alphabet the server keeps to
    device_id: Annotated[str, Meta(pattern=ID_PATTERN, examples=["AA:BB:CC:00:11:22"])]
    client_id: Short  # Client-Id: a UUID the device keeps, so only it collects the token


class DeviceBind(msgspec.Struct, forbid_unknown_fields=True):
    code: CodeText  # the activation code the device shows
    assistant_id: Id | None = None  # default: the user's default assistant
    name: Name | None = None


class Device(msgspec.Struct):
    device_id: str
    assistant_id: str
    name: str | None
    bound_at: str


class BoundDevice(msgspec.Struct):
    device: Device
    token: str  # the device token (also handed to the device when it asks again)


class DevicePage(msgspec.Struct):
    items: list[Device]
    next_cursor: str | None


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any]


class Error(msgspec.Struct):
    error: ErrorBody


# --- documents, search and sessions ----------------------------------------------------------


class Document(msgspec.Struct):
    document_id: str
    title: str
    filename: str
    content_type: str  # text/plain | text/markdown | text/html | application/pdf
    size: int  # bytes
    status: Literal["uploaded", "indexed", "failed"]  # uploaded: the indexer is on it
    chunks: int  # passages in the knowledge base (once indexed)
    error: str | None  # why indexing failed
    uploaded_at: str
    indexed_at: str | None


class DocumentPage(msgspec.Struct):
    items: list[Document]
    next_cursor: str | None


class Chunk(msgspec.Struct):
    document_id: str
    chunk_index: int  # its place in the document, from 0
    heading: str | None  # the section it is under
    text: str


class ChunkPage(msgspec.Struct):
    items: list[Chunk]
    next_cursor: str | None


class SearchHit(msgspec.Struct):
    document_id: str
    title: str
    chunk_index: int
    heading: str | None
    text: str
    score: float  # higher is better (reciprocal rank fusion of vector and full-text ranks)


class SearchResults(msgspec.Struct):
    query: str
    hits: list[SearchHit]


class Session(msgspec.Struct):
    session_id: str
    assistant_id: str | None
    device_id: str | None
    transport: str | None  # ws | xiaozhi | webrtc | nats
    started_at: str | None
    ended_at: str | None  # null while the session is open
    end_reason: str | None
    turns: int
    events: int
    last_answer: str | None
    last_event_at: str


class SessionPage(msgspec.Struct):
    items: list[Session]
    next_cursor: str | None


class Message(msgspec.Struct):
    message_id: str
    turn_id: str | None
    role: Literal["user", "assistant", "tool"]
    text: str  # a tool call's arguments, a tool result's content
    tool_name: str | None
    tool_call_id: str | None
    at: str


class MessagePage(msgspec.Struct):
    items: list[Message]
    next_cursor: str | None


class TurnLatencies(msgspec.Struct):
    """Milliseconds from the end of the user's input (the end of speech for a voice turn,
    the turn's start for a typed one); null for a stage the turn did not reach."""

    transcript_ms: float | None  # end of speech → final transcript (voice turns)
    first_token_ms: float | None  # the LLM's time to first token
    first_sentence_ms: float | None  # → the answer's first sentence
    first_audio_ms: float | None  # → its first audio
    answer_ms: float | None  # → the whole answer


class Turn(msgspec.Struct):
    turn_id: str
    input: Literal["text", "voice"]
    input_text: str
    answer_text: str | None
    interrupted: bool
    interrupt_reason: str | None  # barge_in | abort | new_input | session_ended
    provider: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    tool_calls: int
    speech_started_at: str | None
    speech_stopped_at: str | None
    transcript_at: str | None
    started_at: str | None  # turn.started
    first_sentence_at: str | None
    first_audio_at: str | None
    answered_at: str | None
    latencies: TurnLatencies


class TurnPage(msgspec.Struct):
    items: list[Turn]
    next_cursor: str | None


# --- analytics (projections/analytics.py makes the answer; these Structs document it) ---


class Percentiles(msgspec.Struct):
    p50: float | None  # ms; None: no turn had the stage
    p90: float | None
    p99: float | None
    count: int  # turns that had the stage


class StageLatencies(msgspec.Struct):
    transcript: Percentiles  # end of speech → transcript.final (voice turns)
    first_token: Percentiles  # the LLM's time to first token
    first_sentence: Percentiles  # end of the input → the answer's first sentence
    first_audio: Percentiles  # end of the input → its first audio (tts.started)
    first_delta: Percentiles  # user.text → the first delta (typed turns)


class UsageTotals(msgspec.Struct):
    sessions: int
    turns: int
    audio_in_minutes: float  # speech heard
    audio_out_minutes: float  # speech spoken
    prompt_tokens: int
    completion_tokens: int
    cost: float  # in `currency`, from the configuration's [[prices]]; unpriced: 0
    interruptions: int
    errors: int
    tool_calls: int
    latency_ms: StageLatencies


class UsageRow(UsageTotals):
    key: str  # the day (YYYY-MM-DD, UTC), user id, assistant id, model or transport
    label: str  # what a person reads: the email, the assistant's name…


class Analytics(msgspec.Struct):
    since: str  # ISO 8601, UTC
    until: str
    by: Literal["day", "assistant", "model", "user", "transport"]
    scope: Literal["own", "all"]  # own: the caller's sessions; all: an operator's view
    currency: str
    rows: list[UsageRow]  # ordered by key
    totals: UsageTotals
