"""Every pluggable kind (actors, ASR engines, TTS voices, built-in tools) is a `Registry`:
names → "module:attr", each module imported only when its name is loaded, so a process
loads the models and SDKs of what it runs and nothing else (and piper-tts, GPL-3.0, is
imported by no process that does not speak with it).

Adding a plug-in: its module, and one line in the registry of its kind.
"""

from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, str], Generic[T]):
    """A name's target is "package.module:attr"; `load` imports it. A dict, so tests and
    deployments may register more (`registry[name] = "module:attr"`)."""

    def __init__(self, kind: str, targets: dict[str, str], *,
                 error: type[Exception] = KeyError, where: str = "") -> None:
        super().__init__(targets)
        self.kind = kind
        self.error = error
        self.where = where  # the setting the name came from, to lead the error with

    def load(self, name: str) -> T:
        try:
            module, _, attr = self[name].partition(":")
        except KeyError:
            lead = f"{self.where}: " if self.where else ""
            raise self.error(f"{lead}unknown {self.kind} {name!r}; "
                             f"known: {', '.join(sorted(self))}") from None
        loaded: Any = getattr(importlib.import_module(module), attr)
        return loaded
