"""A fast stream's token deltas reach the client coalesced, in order, all of them."""

from __future__ import annotations

import asyncio

from actors.dialogue.deltas import LiveText


async def test_a_burst_of_tokens_is_sent_as_few_deltas_in_order() -> None:
    sent: list[tuple[str, int]] = []

    async def publish(text: str, index: int) -> None:
        sent.append((text, index))

    live = LiveText(publish, every=0.05)
    tokens = [f"t{i} " for i in range(300)]
    for token in tokens:
        await live.add(token)
    assert sent == [("t0 ", 0)]  # the first at once: the time to first token is not delayed
    await live.flush()
    assert "".join(t for t, _ in sent) == "".join(tokens)
    assert [i for _, i in sent] == list(range(len(sent)))
    assert len(sent) == 2


async def test_text_left_waiting_is_sent_when_the_interval_ends() -> None:
    sent: list[str] = []

    async def publish(text: str, index: int) -> None:
        sent.append(text)

    live = LiveText(publish, every=0.05)
    await live.add("Hello")
    await live.add(", world")  # within the interval: waits, with no later token to carry it
    assert sent == ["Hello"]
    await asyncio.sleep(0.15)
    assert sent == ["Hello", ", world"]


async def test_a_turn_cut_short_drops_what_waits() -> None:
    sent: list[str] = []

    async def publish(text: str, index: int) -> None:
        sent.append(text)

    live = LiveText(publish, every=0.05)
    await live.add("Hello")
    await live.add(" there")
    live.close()
    await asyncio.sleep(0.1)
    assert sent == ["Hello"]
