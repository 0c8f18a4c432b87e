"""What use costs, by the `[[prices]]` table: the one rule for which entry prices a provider's
model, and the arithmetic of tokens and minutes, shared by the live metrics and the
analytics read from the log."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol


class Price(Protocol):
    """A `[[prices]]` entry (settings.config.PriceConfig)."""

    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def prompt_per_million(self) -> float: ...
    @property
    def completion_per_million(self) -> float: ...
    @property
    def audio_in_per_minute(self) -> float: ...
    @property
    def audio_out_per_minute(self) -> float: ...


class Prices:
    def __init__(self, entries: Iterable[Price] = ()) -> None:
        self._by: dict[tuple[str, str], Price] = {}
        for entry in entries:  # the first entry for a provider and model is the one
            self._by.setdefault((entry.provider, entry.model), entry)

    def of(self, provider: str | None, model: str | None) -> Price | None:
        """The provider's price for this model, else its price for any model (`*`); None:
        unpriced."""
        if not provider:
            return None
        return (self._by.get((provider, model)) if model else None) or self._by.get((provider, "*"))

    def tokens(self, provider: str | None, model: str | None, prompt: int, completion: int) -> float:
        price = self.of(provider, model)
        if price is None:
            return 0.0
        return (prompt * price.prompt_per_million + completion * price.completion_per_million) / 1e6

    def audio(self, provider: str | None, direction: Literal["in", "out"], seconds: float) -> float:
        """Speech heard (`in`, a transcription provider) or spoken (`out`, a voice)."""
        price = self.of(provider, None)
        if price is None:
            return 0.0
        return seconds / 60 * (price.audio_in_per_minute if direction == "in"
                               else price.audio_out_per_minute)
