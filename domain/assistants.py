"""Assistants: create, update and delete, each decided on the assistant's own log.

Provider choices are names from the server's configuration (keys stay there) or of the
providers vagent has; tools are names from the configuration or the tools actor's
published catalog; documents are the owner's own document ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import msgspec

from bus import kv
from bus.client import Bus
from bus.errors import ConflictError
from bus.log import load
from domain.accounts import UserState
from domain.errors import Conflict, Invalid, NotFound
from schemas import (
    DEFAULT_ASSISTANT_ID,
    TOOL_CATALOG,
    AssistantCreated,
    AssistantDeleted,
    AssistantUpdated,
    DocumentDeleted,
    DocumentUploaded,
    Language,
    TurnSettings,
    new_id,
)
from settings.config import Config
from settings.llm import provider_configs
from settings.plugins import ASR, TTS, plugin_names

CLEARED_GREETING = ""


@dataclass
class AssistantState:
    assistant_id: str
    owner_id: str | None = None
    turn: TurnSettings | None = None  # the group as it now is: an update changes some of it
    deleted: bool = False
    last_seq: int = 0


async def load_assistant(bus: Bus, assistant_id: str) -> AssistantState | None:
    entries, last = await load(bus, "assistant", assistant_id)
    state: AssistantState | None = None
    for entry in entries:
        match entry.event:
            case AssistantCreated() as created:
                state = AssistantState(assistant_id, created.owner_id, created.turn, last_seq=last)
            case AssistantUpdated(turn=turn) if state and turn is not None:
                state.turn = turn
            case AssistantDeleted() if state:
                state.deleted = True
    return state


def turn_settings(given: TurnSettings | dict[str, Any]) -> TurnSettings:
    """`given` checked against TurnSettings' limits; a refusal names the field."""
    if isinstance(given, TurnSettings):
        given = msgspec.structs.asdict(given)
    try:
        return msgspec.convert({k: v for k, v in given.items() if v is not None}, TurnSettings)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$.", "`$.turn.").replace("`$`", "`$.turn`")
        raise Invalid("invalid_turn", text, {"field": "turn"}) from None


def merged_turn(current: TurnSettings | None, changes: TurnSettings | dict[str, Any]) -> TurnSettings:
    """The turn group after `changes`: a field named there takes its value, or the
    configuration's if it is None; the others are left as they were."""
    if isinstance(changes, TurnSettings):  # the fields it sets
        changes = msgspec.structs.asdict(changes)
        changes = {k: v for k, v in changes.items() if v is not None}
    kept = msgspec.structs.asdict(current) if current is not None else {}
    return turn_settings({**kept, **changes})


class Assistants:
    def __init__(self, bus: Bus, config: Config) -> None:
        self.bus = bus
        self.config = config

    async def owned(self, owner_id: str | None, assistant_id: str) -> AssistantState:
        """The assistant if it exists and is `owner_id`'s (None: the system's); 404 otherwise
        (also for others')."""
        try:
            state = await load_assistant(self.bus, assistant_id)
        except ValueError:  # not a valid id token
            state = None
        if state is None or state.deleted or state.owner_id != owner_id:
            raise NotFound("assistant", assistant_id)
        return state

    async def create(self, owner_id: str, settings: dict[str, Any]) -> str:
        await self.validate(owner_id, settings)
        if settings.get("turn") is not None:
            settings = {**settings, "turn": turn_settings(settings["turn"])}
        assistant_id = new_id()
        await self.bus.append(AssistantCreated(assistant_id=assistant_id, owner_id=owner_id, **settings), 0)
        return assistant_id

    async def update(self, owner_id: str | None, assistant_id: str, settings: dict[str, Any]) -> None:
        """Change the settings given; `greeting: None` among them clears the greeting.
        `turn` is the turn settings to change, by name (None: back to the configuration's);
        the others keep their values."""
        state = await self.owned(owner_id, assistant_id)
        await self.validate(owner_id, settings)
        if settings.get("turn") is not None:
            # assistant.updated carries the whole group as it now is, so the log alone says
            # each assistant's turn-taking without folding its history field by field.
            settings = {**settings, "turn": merged_turn(state.turn, settings["turn"])}
        if "greeting" in settings and settings["greeting"] is None:
            # In assistant.updated a None field is one that did not change, so a cleared
            # greeting is recorded as "": the read model stores it, the dialogue speaks no
            # empty greeting, and the API shows it as null.
            settings = {**settings, "greeting": CLEARED_GREETING}
        try:
            await self.bus.append(AssistantUpdated(assistant_id=assistant_id, **settings), state.last_seq)
        except ConflictError:
            raise Conflict("conflict", "the assistant changed meanwhile: read it and retry") from None

    async def delete(self, owner: UserState, assistant_id: str) -> None:
        """Refused while the owner's devices talk to it, and for the owner's default."""
        in_use = sorted(device for device, assistant in owner.devices.items() if assistant == assistant_id)
        if in_use:
            raise Conflict("assistant_in_use", "devices are bound to this assistant: unbind them first",
                           {"devices": in_use})
        state = await self.owned(owner.user_id, assistant_id)
        if assistant_id == owner.default_assistant_id:
            raise Conflict("default_assistant", "the default assistant cannot be deleted")
        try:
            await self.bus.append(AssistantDeleted(assistant_id=assistant_id), state.last_seq)
        except ConflictError:
            raise Conflict("conflict", "the assistant changed meanwhile: read it and retry") from None

    async def ensure_default(self) -> None:
        """The system's default assistant (for sessions nobody owns), created once."""
        # An empty persona: the dialogue then uses the configured system prompt, so editing
        # the configuration still changes how the default assistant speaks.
        created = AssistantCreated(assistant_id=DEFAULT_ASSISTANT_ID, name="Assistant", persona="")
        try:
            await self.bus.append(created, 0)
        except ConflictError:
            pass  # it exists

    async def validate(self, owner_id: str | None, settings: dict[str, Any]) -> None:
        choices = {
            "llm": [p.name for p in provider_configs(self.config)],
            "asr": plugin_names(ASR) + [p.name for p in self.config.asr.providers],
            "tts": plugin_names(TTS) + [p.name for p in self.config.tts.providers],
        }
        for kind, known in choices.items():
            name = settings.get(kind)
            if name is not None and name not in known:
                raise Invalid("unknown_provider", f"no {kind} provider named {name!r}",
                              {"field": kind, "known": known})
        language = settings.get("language")
        if language is not None and language not in get_args(Language):
            raise Invalid("unknown_language", f"no language {language!r}",
                          {"field": "language", "known": list(get_args(Language))})
        tools = settings.get("tools")
        if tools:
            known_tools = set(self.config.tools.builtins) | {w.name for w in self.config.tools.webhooks}
            known_tools |= set(await kv.items(self.bus, TOOL_CATALOG))  # keyed by tool name
            unknown = sorted(set(tools) - known_tools)
            if unknown:
                raise Invalid("unknown_tool", f"no tool named {', '.join(map(repr, unknown))}",
                              {"field": "tools", "unknown": unknown, "known": sorted(known_tools)})
        for document_id in settings.get("documents") or []:
            if not await self._owns_document(owner_id, document_id):
                raise Invalid("unknown_document", f"no document {document_id!r}",
                              {"field": "documents", "id": document_id})

    async def _owns_document(self, owner_id: str | None, document_id: str) -> bool:
        try:
            entries, _ = await load(self.bus, "doc", document_id)
        except ValueError:
            return False
        owner, alive = None, False
        for entry in entries:
            match entry.event:
                case DocumentUploaded() as uploaded:
                    owner, alive = uploaded.owner_id, True
                case DocumentDeleted():
                    alive = False
        return alive and owner == owner_id
