"""User, device, assistant and document events.
They never carry a password, a token or a key: only what a read model needs."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.base import AssistantEvent, DocumentEvent, UserEvent


class UserRegistered(UserEvent, tag="user.registered", kw_only=True):
    email: str
    display_name: str | None = None
    default_assistant_id: str | None = None  # created for the user at registration


class UserEmailVerified(UserEvent, tag="user.email_verified", kw_only=True):
    pass


class UserLocked(UserEvent, tag="user.locked", kw_only=True):
    reason: str = "admin"
    until_ts: int | None = None


class UserUnlocked(UserEvent, tag="user.unlocked", kw_only=True):
    pass


# What an account may do beyond its own resources: an `operator` reads every user's usage
# and cost (GET /api/v1/analytics); granted from the terminal (`vagent users role`).
Role = Literal["user", "operator"]
ROLES: tuple[str, ...] = ("user", "operator")


class UserRoleChanged(UserEvent, tag="user.role_changed", kw_only=True):
    role: Role


class DeviceBound(UserEvent, tag="device.bound", kw_only=True):
    device_id: str  # Device-Id (MAC) of a xiaozhi device
    assistant_id: str
    name: str | None = None


class DeviceUnbound(UserEvent, tag="device.unbound", kw_only=True):
    device_id: str


# What an assistant hears and answers in: Mandarin, English, or `auto`: heard in the language
# of the session's first utterance, answered in the language of the user's latest input.
Language = Literal["en", "zh", "auto"]

# The assistant of sessions that name none (the CLI's `say` and `chat`, anonymous
# clients): created once at the edge's start, owned by nobody.
DEFAULT_ASSISTANT_ID = "default"
# The KV bucket where the tools actor publishes its catalog, keyed by tool name.
TOOL_CATALOG = "vagent_tools"


Ms = Annotated[int, msgspec.Meta(ge=0, le=60_000)]


class TurnSettings(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """How an assistant takes turns; each field left out takes `[asr.turn]` (or `[asr]`
    `barge_in_min_ms`) of the configuration."""

    # smart_turn: at each pause the turn model decides whether the utterance is complete;
    # silence: a fixed silence (`[asr.vad] silence_ms`) ends every utterance.
    detector: Literal["smart_turn", "silence"] | None = None
    complete_hold_ms: Ms | None = None  # silence that ends an utterance judged complete
    incomplete_max_ms: Ms | None = None  # silence that ends one judged incomplete anyway
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None  # P(complete)
    barge_in_min_ms: Ms | None = None  # speech over the assistant this long pauses it
    false_interruption_timeout_ms: Ms | None = None  # paused without words this long: resume
    backchannels: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=32)]],
                            msgspec.Meta(max_length=64)] | None = None
    # Discount the assistant's own voice heard back through the client's microphone:
    # auto: unless the client says it cancels echo itself.
    echo: Literal["auto", "on", "off"] | None = None


class AssistantSettings(msgspec.Struct, kw_only=True):
    """An assistant's settings, declared once: the dialogue's profile extends it, the read
    model's columns and the API's bodies are made from its fields, and the two events below
    carry the same fields (tests/test_schemas.py holds them to it)."""

    name: str = "Assistant"
    persona: str = ""  # the system prompt
    greeting: str | None = None  # spoken first; "" once cleared
    voice: str | None = None  # a voice of its TTS provider
    llm: str | None = None  # provider names, from the configuration or the ones vagent has
    asr: str | None = None
    tts: str | None = None
    tools: list[str] = msgspec.field(default_factory=list)
    documents: list[str] = msgspec.field(default_factory=list)
    language: Language = "en"
    turn: TurnSettings | None = None  # None: the configuration's


ASSISTANT_SETTINGS: tuple[str, ...] = AssistantSettings.__struct_fields__


class AssistantCreated(AssistantEvent, tag="assistant.created", kw_only=True):
    owner_id: str | None = None
    name: str = "Assistant"
    persona: str = ""
    greeting: str | None = None
    voice: str | None = None
    llm: str | None = None
    asr: str | None = None
    tts: str | None = None
    tools: list[str] = msgspec.field(default_factory=list)
    documents: list[str] = msgspec.field(default_factory=list)
    language: Language = "en"
    turn: TurnSettings | None = None


class AssistantUpdated(AssistantEvent, tag="assistant.updated", kw_only=True):
    """Only the fields present changed."""

    name: str | None = None
    persona: str | None = None
    greeting: str | None = None
    voice: str | None = None
    llm: str | None = None
    asr: str | None = None
    tts: str | None = None
    tools: list[str] | None = None
    documents: list[str] | None = None
    language: Language | None = None
    turn: TurnSettings | None = None


class AssistantDeleted(AssistantEvent, tag="assistant.deleted", kw_only=True):
    pass


class DocumentUploaded(DocumentEvent, tag="document.uploaded", kw_only=True):
    owner_id: str | None = None
    title: str = ""
    filename: str = ""
    content_type: str = "text/plain"
    size: int = 0
    object_name: str = ""  # name in Object Store bucket `docs`


class DocumentIndexed(DocumentEvent, tag="document.indexed", kw_only=True):
    chunks: int = 0


class DocumentFailed(DocumentEvent, tag="document.failed", kw_only=True):
    reason: str


class DocumentDeleted(DocumentEvent, tag="document.deleted", kw_only=True):
    pass


ACCOUNT_EVENTS = (
    UserRegistered, UserEmailVerified, UserLocked, UserUnlocked, UserRoleChanged, DeviceBound, DeviceUnbound,
    AssistantCreated, AssistantUpdated, AssistantDeleted,
    DocumentUploaded, DocumentIndexed, DocumentFailed, DocumentDeleted,
)
