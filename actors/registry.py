"""Actor names → classes, imported lazily so one actor's models load only where it runs."""

from __future__ import annotations

import importlib

from actors.base import Actor

ACTORS: dict[str, str] = {
    "asr": "actors.asr.actor:Asr",
    "dialogue": "actors.dialogue.actor:Dialogue",
    "indexer": "actors.indexer:Indexer",
    "tools": "actors.tools.actor:Tools",
    "tts": "actors.tts.actor:Tts",
}


def actor_class(name: str) -> type[Actor]:
    try:
        module, _, attr = ACTORS[name].partition(":")
    except KeyError:
        raise KeyError(f"unknown actor {name!r}; known: {', '.join(sorted(ACTORS))}") from None
    return getattr(importlib.import_module(module), attr)
