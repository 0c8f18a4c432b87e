"""The tool catalog in KV bucket `vagent_tools` (key: tool name, value: ToolSpec JSON).

The tools actor writes it; the dialogue, another process, reads it to offer the tools.
"""

from __future__ import annotations

import contextlib
import logging

import msgspec

from actors.tools.spec import ToolSpec
from bus import kv
from bus.client import Bus
from schemas import TOOL_CATALOG

BUCKET = TOOL_CATALOG
log = logging.getLogger("vagent.tools")


async def catalog(bus: Bus) -> list[ToolSpec]:
    """Every published tool, sorted by name: a stable order keeps the LLM's prompt prefix
    (and so its cache) identical from turn to turn."""
    specs = []
    for key, value in (await kv.items(bus, BUCKET)).items():
        try:
            specs.append(msgspec.json.decode(value, type=ToolSpec))
        except msgspec.DecodeError as exc:
            log.warning("skipping unreadable catalog entry", extra={"key": key, "error": str(exc)})
    return sorted(specs, key=lambda s: s.name)


async def publish(bus: Bus, specs: list[ToolSpec]) -> None:
    for spec in specs:
        await kv.put(bus, BUCKET, spec.name, msgspec.json.encode(spec))


async def withdraw(bus: Bus, names: list[str]) -> None:
    """Remove these tools from the catalog, best effort (NATS may already be gone)."""
    for name in names:
        with contextlib.suppress(Exception):
            await kv.delete(bus, BUCKET, name)
