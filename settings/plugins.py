"""Speech providers are Python entry points of the vagent package: a provider is its module
plus one line under `[project.entry-points."vagent.asr"]` or `["vagent.tts"]` in
pyproject.toml (another installed package may add its own the same way).

The names come from the installed package's metadata, so the layers below the actors (the
domain checking an assistant's choice) know them without importing a provider's SDK.
"""

from __future__ import annotations

from importlib.metadata import entry_points

ASR = "vagent.asr"
TTS = "vagent.tts"


def plugins(group: str) -> dict[str, str]:
    """Name → "module:attr" of every installed plug-in of a kind."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def plugin_names(group: str) -> list[str]:
    return sorted(plugins(group))
