"""An assistant's settings as command-line options: one option per field of
schemas.AssistantSettings, made from the declaration, so a setting added there is settable
from `vagent assistants create` without touching the CLI.

A list setting is given one item at a time under its singular name (`--tool a --tool b`
for `tools`). What is given is checked by the API's own body (edge.api.models) and then by
the domain, exactly as a request would be; what is left out keeps its declared default.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
import typer

from schemas import AssistantSettings

SETTINGS = msgspec.structs.fields(AssistantSettings)
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
}
PANEL = "Assistant settings"
# Types typer parses itself; a setting of another type is taken as text and converted by
# the API's body.
_PARSED = (str, int, float, bool)
_ANNOTATED: Any = Annotated  # subscripted with types known only at run time


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


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


def settings_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with an option per assistant setting where its `settings` parameter is;
    it is called with the settings given, by name (the others are left out)."""
    own = inspect.signature(command, eval_str=True)
    parameters: list[inspect.Parameter] = []
    for parameter in own.parameters.values():
        if parameter.name == "settings":
            parameters += [_parameter(setting) for setting in SETTINGS]
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    if len(parameters) != len(own.parameters) + len(SETTINGS) - 1:
        raise TypeError(f"{command.__name__} takes no `settings` parameter")

    @functools.wraps(command)
    def with_settings(**given: Any) -> None:
        values = {s.name: given.pop(s.name) for s in SETTINGS}
        command(**given, settings={name: value for name, value in values.items() if value is not None})

    with_settings.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_settings.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return with_settings


_AT = re.compile(r"^(?P<what>.*) - at `\$\.(?P<field>\w+)(?:\[(?P<index>\d+)\])?.*`$")


def invalid(exc: msgspec.ValidationError) -> str:
    """A refusal of the API's body, naming the option rather than the JSON path."""
    found = _AT.match(str(exc))
    by_name = {s.name: s for s in SETTINGS}
    if found is None or found["field"] not in by_name:
        return str(exc)
    where = option(by_name[found["field"]])
    if found["index"] is not None:
        where += f" (value {int(found['index']) + 1})"
    return f"{where}: {found['what']}"
