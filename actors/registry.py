"""Actor names → classes, imported lazily so one actor's models load only where it runs."""

from __future__ import annotations

from actors.base import Actor
from actors.plugins import Registry

ACTORS: Registry[type[Actor]] = Registry("actor", {
    "asr": "actors.asr.actor:Asr",
    "dialogue": "actors.dialogue.actor:Dialogue",
    "indexer": "actors.indexer:Indexer",
    "tools": "actors.tools.actor:Tools",
    "tts": "actors.tts.actor:Tts",
})


def actor_class(name: str) -> type[Actor]:
    return ACTORS.load(name)
