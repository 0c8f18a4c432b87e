"""Quick replies: synthesized audio kept by (provider, voice, text), least recently used
out first, bounded by bytes. Greetings, "One moment." and the goodbye repeat across
sessions; serving them from memory skips synthesis (the first sentence's latency)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

CacheKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class CachedAudio:
    pcm: bytes  # PCM16 mono
    sample_rate: int


class AudioCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[CacheKey, CachedAudio] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: CacheKey) -> CachedAudio | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def admits(self, nbytes: int) -> bool:
        """Whether audio of this size would be kept: asked before joining a long answer's
        chunks into one copy that would only be thrown away."""
        # One long answer must not flush every short quick reply out.
        return 0 < nbytes <= self.max_bytes // 4

    def put(self, key: CacheKey, item: CachedAudio) -> None:
        if not self.admits(len(item.pcm)):
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old.pcm)
        self._items[key] = item
        self.bytes += len(item.pcm)
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= len(dropped.pcm)
