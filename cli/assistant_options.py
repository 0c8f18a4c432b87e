"""An assistant's settings as command-line options: one option per field of
schemas.AssistantSettings, made from the declaration, so a setting added there is settable
from `vagent assistants create` without touching the CLI.

A list setting is given one item at a time under its singular name (`--tool a --tool b`
for `tools`). A group of settings (`turn`) is an option per field of the group: taken as
text, `default` for the configuration's, a list as comma-separated items. What is given is
checked by the API's own body (edge.api.models) and then by the domain, exactly as a request
would be; what is left out keeps its declared default (or, in an update, its value).
"""

from __future__ import annotations

import functools
import inspect
import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
import typer

from edge.jsonparse import explained
from schemas import AssistantSettings, TurnSettings

SETTINGS = msgspec.structs.fields(AssistantSettings)
# Settings that are groups of settings: an option per field of the group.
GROUPS: dict[str, type[msgspec.Struct]] = {"turn": TurnSettings}
# A group's field is `--field`, but for those whose name alone would not say what they set.
GROUP_OPTIONS: dict[str, dict[str, str]] = {
    "turn": {"detector": "--turn-detector", "threshold": "--turn-threshold"},
}
DEFAULT = "default"  # a group's field given as this: the configuration's value
# What each setting means, for --help; the option, its type and its default come from the
# declaration, so a setting missing here is still listed and settable.
MEANING: dict[str, str] = {
    "name": "Its name.",
    "persona": "Its system prompt (empty: the configured one).",
    "greeting": "What it says first.",
    "voice": "A voice of its TTS provider.",
    "llm": "An LLM provider named in the configuration.",
    "asr": "An ASR provider (moonshine, deepgram, whisper) or one named in [[asr.providers]].",
    "tts": "A TTS provider (piper, elevenlabs) or one named in [[tts.providers]].",
    "tools": "A tool it may call.",
    "documents": "One of the owner's documents it may search (an id from `vagent docs list`).",
    "language": "What it hears and answers in: en, zh (Mandarin) or auto (the speaker's language).",
    "turn.detector": "What ends a turn: smart_turn (the turn model judges each pause) or silence "
                     "(a fixed silence).",
    "turn.complete_hold_ms": "Silence that ends an utterance judged complete, ms.",
    "turn.incomplete_max_ms": "Silence that ends an utterance judged incomplete anyway, ms.",
    "turn.threshold": "The turn model's P(complete) that ends a turn, 0–1.",
    "turn.barge_in_min_ms": "Speech over the assistant this long pauses it, ms (higher for a "
                            "speaker without echo cancellation).",
    "turn.false_interruption_timeout_ms": "Paused by speech with no words within this, it resumes, ms.",
    "turn.backchannels": "Words that alone do not interrupt it, comma-separated (\"mhm,ok,嗯\").",
    "turn.echo": "Discount its own voice heard back: auto (unless the client cancels echo), on, off.",
}
# Turn-taking for where the assistant is heard: every turn setting at once (the options
# given beside override it). quiet: the configuration's, made for a headset or a quiet room;
# speaker: a loudspeaker with no echo cancellation, whose own voice comes back to the
# microphone: discount it always, and let only longer speech pause it.
TURN_PRESETS: dict[str, dict[str, Any]] = {
    "quiet": {},
    "speaker": {"echo": "on", "barge_in_min_ms": 600},
}
PANEL = "Assistant settings"
TURN_PANEL = "Turn-taking (each also takes `default`: the configuration's)"
# Types typer parses itself; a setting of another type is taken as text and converted by
# the API's body.
_PARSED = (str, int, float, bool)
_ANNOTATED: Any = Annotated  # subscripted with types known only at run time


def _without_none(annotation: Any) -> Any:
    """The type declared, without `| None` and without its limits (Annotated)."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            annotation = rest[0]
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def is_list(setting: msgspec.structs.FieldInfo) -> bool:
    return get_origin(_without_none(setting.type)) is list


def option(setting: msgspec.structs.FieldInfo) -> str:
    """The option that sets `setting`: `--name`, or `--tool` (repeated) for `tools`."""
    name = setting.name.replace("_", "-")
    return f"--{name[:-1] if is_list(setting) and name.endswith('s') else name}"


def _cli_type(setting: msgspec.structs.FieldInfo) -> Any:
    declared = _without_none(setting.type)
    if is_list(setting):
        (item,) = get_args(declared) or (str,)
        return types.GenericAlias(list, (item if item in _PARSED else str,))
    return declared if declared in _PARSED else str


def _help(setting: msgspec.structs.FieldInfo) -> str:
    text = MEANING.get(setting.name, f"The assistant's {setting.name}.")
    if is_list(setting):
        return f"{text} Repeat for more."
    if setting.default not in (None, "", msgspec.NODEFAULT):
        return f"{text} Default: {setting.default}."
    return text


def _parameter(setting: msgspec.structs.FieldInfo) -> inspect.Parameter:
    declared = _ANNOTATED[_cli_type(setting) | None,
                          typer.Option(option(setting), help=_help(setting), show_default=False,
                                       rich_help_panel=PANEL)]
    return inspect.Parameter(setting.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=declared)


def group_option(group: str, field: str) -> str:
    """The option that sets `field` of the group of settings `group`."""
    return GROUP_OPTIONS.get(group, {}).get(field, "--" + field.replace("_", "-"))


def _metavar(field: msgspec.structs.FieldInfo) -> str:
    """What a group's field takes, for --help: its choices, a list, or a number."""
    declared = _without_none(field.type)
    if get_origin(declared) is Literal:
        return "|".join(get_args(declared))
    if is_list(field):
        return "A,B,…"
    return {int: "MS" if field.name.endswith("_ms") else "N", float: "0–1"}.get(declared, "TEXT")


def _group_parameters(group: str) -> list[inspect.Parameter]:
    parameters = []
    for field in msgspec.structs.fields(GROUPS[group]):
        text = MEANING.get(f"{group}.{field.name}", f"The assistant's {group} {field.name}.")
        declared = _ANNOTATED[str | None, typer.Option(
            group_option(group, field.name), help=text, metavar=_metavar(field), show_default=False,
            rich_help_panel=TURN_PANEL)]
        parameters.append(inspect.Parameter(f"{group}__{field.name}", inspect.Parameter.KEYWORD_ONLY,
                                            default=None, annotation=declared))
    if group == "turn":
        presets = "|".join(TURN_PRESETS)
        declared = _ANNOTATED[str | None, typer.Option(
            "--turn-preset", metavar=presets, show_default=False, rich_help_panel=TURN_PANEL,
            help="Every turn setting at once: quiet (the configuration's: a headset or a quiet room) "
                 "or speaker (no echo cancellation: echo on, barge-in after 600 ms); the turn "
                 "options given beside override it.")]
        parameters.append(inspect.Parameter("turn__preset", inspect.Parameter.KEYWORD_ONLY,
                                            default=None, annotation=declared))
    return parameters


def _group_value(field: msgspec.structs.FieldInfo, text: str) -> Any:
    """A group's field as given on the command line: None for `default`, a list from
    comma-separated items (an empty one for ""), else the text, read by the API's body."""
    if text.strip().lower() == DEFAULT:
        return None
    if is_list(field):
        return [item.strip() for item in re.split(r"[,，、]", text) if item.strip()]
    return text.strip()


def _group_given(group: str, given: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of `group` given (their options or its preset), or None if none was."""
    preset = given.pop(f"{group}__preset", None) if group == "turn" else None
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in TURN_PRESETS:
            raise typer.BadParameter(f"{preset!r} is none of {', '.join(TURN_PRESETS)}",
                                     param_hint="--turn-preset")
        values = {f: None for f in GROUPS[group].__struct_fields__} | TURN_PRESETS[preset]
    for field in msgspec.structs.fields(GROUPS[group]):
        text = given.pop(f"{group}__{field.name}")
        if text is not None:
            values[field.name] = _group_value(field, text)
    return values if preset is not None or values else None


def settings_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with an option per assistant setting where its `settings` parameter is;
    it is called with the settings given, by name (the others are left out). A group's
    fields given are a dict (None: `default`, the configuration's)."""
    own = inspect.signature(command, eval_str=True)
    parameters: list[inspect.Parameter] = []
    for parameter in own.parameters.values():
        if parameter.name == "settings":
            for setting in SETTINGS:
                grouped = setting.name in GROUPS
                parameters += _group_parameters(setting.name) if grouped else [_parameter(setting)]
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    if "settings" not in own.parameters:
        raise TypeError(f"{command.__name__} takes no `settings` parameter")

    @functools.wraps(command)
    def with_settings(**given: Any) -> None:
        groups = {name: _group_given(name, given) for name in GROUPS}
        values = {s.name: given.pop(s.name) for s in SETTINGS if s.name not in GROUPS}
        settings = {name: value for name, value in (values | groups).items() if value is not None}
        command(**given, settings=settings)

    with_settings.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_settings.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return with_settings


_AT = re.compile(r"^(?P<what>.*) - at `\$\.(?P<field>\w+)(?:\.(?P<inner>\w+))?"
                 r"(?:\[(?P<index>\d+)\])?.*`$")


def invalid(exc: msgspec.ValidationError, kind: Any = None) -> str:
    """A refusal of the API's body `kind`, naming the option rather than the JSON path."""
    text = explained(exc, kind)
    found = _AT.match(text)
    by_name = {s.name: s for s in SETTINGS}
    if found is None or found["field"] not in by_name:
        return text
    if found["field"] in GROUPS and found["inner"] is not None:
        where = group_option(found["field"], found["inner"])
    elif found["field"] in GROUPS:
        return f"turn settings: {found['what']}"
    else:
        where = option(by_name[found["field"]])
    if found["index"] is not None:
        where += f" (value {int(found['index']) + 1})"
    return f"{where}: {found['what']}"
