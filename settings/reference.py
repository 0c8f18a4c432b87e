"""The configuration reference, `docs/configuration.md`, rendered from the settings' own
declarations so it cannot drift from them: every field of `Config` with its default, its
meaning (the `doc(...)` beside it in settings/config.py) and the environment variable that
overrides it (ENV_OVERRIDES, ENV_VERBATIM), then the variables a process reads outside the
settings file (PROCESS_ENV).

    uv run python -m settings.reference > docs/configuration.md     # `just docs`
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi

from settings.config import ENV_OVERRIDES, ENV_VERBATIM, Config


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    meaning: str


# Variables read where a process starts, outside vagent.toml. tests/test_config_reference.py
# checks that every VAGENT_… variable the product code reads is here or beside its setting.
PROCESS_ENV: tuple[EnvVar, ...] = (
    EnvVar("VAGENT_CONFIG", "`./vagent.toml` if present", "the settings file"),
    EnvVar("VAGENT_SECRETS_FILE", "unset",
           "a file of `KEY=VALUE` lines filling keys the environment lacks (API keys, the JWT secret)"),
    EnvVar("VAGENT_DATA_DIR", "`./.vagent`",
           "the data directory: the embedded server's store, the read models, the knowledge base, "
           "logs; `--data-dir` wins. Commands other than `vagent up` find the running stack's "
           "by themselves: [cli.md](cli.md#which-stack-a-command-uses)"),
    EnvVar("VAGENT_NATS_URL", "`nats://127.0.0.1:4222`",
           "NATS URL(s), comma-separated; `--nats` wins"),
    EnvVar("VAGENT_REPLICAS", "`1`", "stream and bucket replicas (3 on a NATS cluster)"),
    EnvVar("VAGENT_EDGE_PORT", "`[edge] port`",
           "the edge's port (`vagent up --edge-port`, `vagent edge --port`)"),
    EnvVar("OPENAI_BASE_URL", "unset",
           "one OpenAI-compatible provider when `[llm] providers` names none "
           "(also `VAGENT_LLM_BASE_URL`); unset: the local model"),
    EnvVar("VAGENT_LLM_BASE_URL", "unset", "the same as `OPENAI_BASE_URL`, and wins over it"),
    EnvVar("OPENAI_API_KEY", "unset", "that provider's key (`VAGENT_LLM_API_KEY` wins)"),
    EnvVar("VAGENT_LLM_API_KEY", "unset", "the same as `OPENAI_API_KEY`"),
    EnvVar("VAGENT_LLM_MODEL", "`gpt-4o-mini`", "the model name sent to that provider"),
    EnvVar("VAGENT_LLM_PROVIDER", "`openai`", "that provider's name (what an assistant's `llm` picks)"),
    EnvVar("VAGENT_LOCAL_LLM_URL", "`http://127.0.0.1:8080/v1`",
           "a local model already served: `vagent up` starts none, and a standalone dialogue "
           "actor uses it"),
    EnvVar("VAGENT_JWT_SECRET", "a key in `<data dir>/jwt.key`",
           "the token signing key (32+ characters, shared by every edge); the variable's name "
           "is `[auth] jwt_secret_env`"),
    EnvVar("DEEPGRAM_API_KEY", "unset", "Deepgram's key: `[asr] engine = \"auto\"` then uses Deepgram"),
    EnvVar("ELEVENLABS_API_KEY", "unset", "ElevenLabs' key: an unset `[tts] provider` then uses ElevenLabs"),
    EnvVar("VAGENT_LOG_FORMAT", "`text`", "`json` for one JSON object per log line"),
    EnvVar("VAGENT_LOG_LEVEL", "`INFO`", "the log level"),
    EnvVar("VAGENT_DEBUG", "unset", "set: error log lines carry their traceback too"),
    EnvVar("VAGENT_CHROMIUM", "the first Chromium found (`/usr/bin/chromium`, …)",
           "the Chromium `vagent doctor` checks and the web page's test drives"),
    EnvVar("XDG_STATE_HOME", "`~/.local/state`",
           "where `vagent/stack.json` points to the stack started last"),
    EnvVar("LANCEDB_LOG", "unset (errors only)", "LanceDB's log level"),
)

INTRO = """\
# Configuration reference

<!-- Generated from settings/config.py by settings/reference.py: edit those, then run
     `just docs` (or `uv run python -m settings.reference > docs/configuration.md`). -->

vagent reads its settings once, where a process starts:

1. **The settings file**: `vagent.toml` in the working directory, or the file named by
   `VAGENT_CONFIG`. Every key is optional; an unknown key or a value of the wrong type stops
   the process with the file's name and the key.
2. **Environment variables** override single settings (the *environment* column below). A
   variable set but empty counts as unset; a list takes comma-separated values; a bad value
   stops the process naming the variable and the setting.
3. **Secrets** never live in the file or in events: a setting names the environment variable
   that holds a key (`api_key_env`, `password_env`, `jwt_secret_env`), and
   `VAGENT_SECRETS_FILE` may name a `KEY=VALUE` file that fills variables the environment lacks.

A small `vagent.toml`: one cloud provider, and the tools' limits:

```toml
[[llm.providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"

[tools]
timeout = 10
max_steps = 4
```

## Environment of a process

| variable | default | meaning |
|---|---|---|
"""


def _unwrap(kind: mi.Type) -> tuple[mi.Type, str | None]:
    if isinstance(kind, mi.Metadata):
        description = (kind.extra_json_schema or {}).get("description")
        return kind.type, description
    return kind, None


def _type_name(kind: mi.Type) -> str:
    if isinstance(kind, mi.UnionType):
        names = [_type_name(t) for t in kind.types if not isinstance(t, mi.NoneType)]
        return " or ".join(names)
    if isinstance(kind, mi.LiteralType):
        return " or ".join(json.dumps(v) for v in kind.values)
    if isinstance(kind, mi.ListType):
        return f"list of {_type_name(kind.item_type)}s"
    simple = {mi.StrType: "string", mi.IntType: "integer", mi.FloatType: "number",
              mi.BoolType: "boolean", mi.DictType: "table", mi.AnyType: "any"}
    for cls, name in simple.items():
        if isinstance(kind, cls):
            return name
    if isinstance(kind, mi.Metadata):
        return _type_name(kind.type)
    raise TypeError(f"no name for the setting type {kind!r}")


def _toml(value: Any) -> str:
    """A default as it would be written in vagent.toml."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"no TOML for the default {value!r}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class Setting:
    """One key of the settings file: where it is (`llm.breaker`, `llm.providers[]`), its
    name, type, default (None when required) and meaning."""

    section: str
    key: str
    type: str
    default: str | None
    meaning: str | None

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def heading(self) -> str:
        if self.section.endswith("[]"):
            return f"[[{self.section[:-2]}]]"
        return f"[{self.section}]"


@dataclass(frozen=True)
class Section:
    path: str  # `llm.providers[]` for a list of tables
    meaning: str | None
    depth: int

    @property
    def heading(self) -> str:
        return f"[[{self.path[:-2]}]]" if self.path.endswith("[]") else f"[{self.path}]"


def _default(field: mi.Field) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def walk(struct: type[msgspec.Struct] = Config, path: str = "",
         depth: int = 0) -> Iterator[Section | Setting]:
    """Every section and setting under `struct`, sections first with their own settings
    right after them, in declaration order."""
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    nested: list[tuple[str, str | None, type[msgspec.Struct]]] = []
    for field in info.fields:
        kind, meaning = _unwrap(field.type)
        here = f"{path}.{field.name}" if path else field.name
        if isinstance(kind, mi.StructType):
            nested.append((here, meaning, kind.cls))
        elif isinstance(kind, mi.ListType) and isinstance(kind.item_type, mi.StructType):
            nested.append((here + "[]", meaning, kind.item_type.cls))
        else:
            default = _default(field)
            yield Setting(path, field.name, _type_name(kind),
                          None if default is msgspec.NODEFAULT else _toml(default), meaning)
    for here, meaning, cls in nested:
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(cls.__name__ + "("):  # msgspec's generated signature
            text = " ".join(doc.split())
            meaning = f"{meaning.rstrip('.')}. {text}" if meaning else text
        yield Section(here, meaning, depth)
        yield from walk(cls, here, depth + 1)


def render() -> str:
    env_of = {setting: name for name, setting in {**ENV_OVERRIDES, **ENV_VERBATIM}.items()}
    out = [INTRO]
    out += [f"| `{v.name}` | {v.default} | {_cell(v.meaning)} |\n" for v in PROCESS_ENV]
    out.append("\n## Settings\n\nEach section is a table of `vagent.toml`; `[[…]]` is a list of "
               "tables (repeat it once per entry). *required*: an entry must set it.\n")
    table = "| setting | type | default | environment | meaning |\n|---|---|---|---|---|\n"
    pending = ""  # a section's table starts at its first setting
    for item in walk():
        if isinstance(item, Section):
            out.append(f"\n{'#' * min(3 + item.depth, 4)} `{item.heading}`\n\n")
            if item.meaning:
                meaning = item.meaning.rstrip(".")
                out.append(f"{meaning[0].upper()}{meaning[1:]}.\n\n")
            pending = table
            continue
        out.append(pending)
        pending = ""
        env = env_of.get(item.path.replace("[]", ""), "")
        if item.default is None:
            default = "*required*"
        elif item.default == "unset":
            default = "unset"
        else:
            default = f"`{_cell(item.default)}`"
        out.append(f"| `{item.heading} {item.key}` | {_cell(item.type)} | {default} | "
                   f"{f'`{env}`' if env else ''} | {_cell(item.meaning or '')} |\n")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
