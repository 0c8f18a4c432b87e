"""The chat-completions message list for a session, built from its event log.

The log is the only memory the dialogue actor has (it keeps no state between events), so
every turn rebuilds the conversation from it: user inputs, the assistant's answers (only
what was actually produced when a turn was interrupted), its tool calls and their
results, trimmed to a token budget by dropping whole oldest turns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus.log import Entry
from schemas import (
    AssistantMessage,
    ToolCall,
    ToolCallRef,
    ToolResult,
    TranscriptFinal,
    TtsSentence,
    TurnInterrupted,
    UserText,
)

Message = dict[str, Any]

# Chat templates wrap every message in a role header and separators: a few tokens each.
MESSAGE_OVERHEAD_TOKENS = 4


def approx_tokens(text: str) -> int:
    """An estimate of `text`'s token count, cheap enough to run on every turn: one token
    per CJK character (ideographs, kana, hangul, full-width forms) and one per four other
    characters, rounded up. Real tokenizers differ by model; the budget should leave slack."""
    if text.isascii():  # in C: no character to look at one by one (a long history's cost)
        return (len(text) + 3) // 4
    wide = sum(1 for char in text if _is_wide(char))
    return wide + (len(text) - wide + 3) // 4


def _is_wide(char: str) -> bool:
    code = ord(char)
    return (0x3000 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF or 0xFF00 <= code <= 0xFFEF
            or 0x20000 <= code <= 0x2FA1F)


def build_messages(system_prompt: str, entries: list[Entry], *, budget_tokens: int,
                   count_tokens: Callable[[str], int] = approx_tokens) -> list[Message]:
    """`[system, *conversation]` for the chat-completions API.

    - The system message's content is exactly `system_prompt`, so the prompt prefix stays
      byte-identical across turns and the server's prompt cache keeps working.
    - User messages come from `user.text` and `transcript.final`; assistant messages from
      `assistant.message` (its text, and its `tool_calls` in the OpenAI shape), each call
      followed by its `tool.result` as a `tool` message. For a turn whose
      `turn.interrupted` says what was spoken, that text replaces the turn's last answer:
      the user heard only that much.
    - A tool call without a result is left out (the API rejects a call with no answer),
      and so is a result without its call.
    - Over `budget_tokens` (estimated with `count_tokens`, system prompt included), whole
      turns are dropped, oldest first; a turn is a user message and everything up to the
      next one, so a call and its results always go together. The latest turn is always
      kept, even alone over the budget.
    """
    events = [entry.event for entry in entries if entry.event is not None]
    results: dict[str, ToolResult] = {}
    announced: set[str] = set()  # call ids that some assistant.message carries
    last_answer: dict[str, int] = {}  # turn id → index of its last assistant.message
    spoken: dict[str, str] = {}  # turn id → what was said before the interruption
    voiced: dict[str, list[TtsSentence]] = {}  # turn id → the sentences the TTS began to play
    for index, event in enumerate(events):
        if isinstance(event, ToolResult):
            results.setdefault(event.call_id, event)
        elif isinstance(event, AssistantMessage):
            announced.update(call.call_id for call in event.tool_calls)
            if event.turn_id:
                last_answer[event.turn_id] = index
        elif isinstance(event, TurnInterrupted) and event.turn_id and event.spoken_text is not None:
            spoken[event.turn_id] = event.spoken_text
        elif isinstance(event, TtsSentence) and event.turn_id:
            voiced.setdefault(event.turn_id, []).append(event)
    # In a voice session, what the user heard is what the TTS began to play before the
    # interruption (its tts.sentence events), not everything the LLM had written by then.
    for event in events:
        if isinstance(event, TurnInterrupted) and event.turn_id in voiced:
            heard = sorted(voiced[event.turn_id], key=lambda e: e.index)
            spoken[event.turn_id] = " ".join(e.text for e in heard)

    turns: list[list[Message]] = [[]]  # the first holds whatever precedes the first user input
    used: set[str] = set()  # call ids already placed (a call is answered once)
    loose: list[ToolCallRef] = []  # tool.call events no assistant.message carries

    def add_answer(text: str, calls: list[ToolCallRef]) -> None:
        calls = [call for call in calls if call.call_id in results and call.call_id not in used]
        if not text.strip() and not calls:
            return
        message: Message = {"role": "assistant", "content": text if text.strip() else None}
        if calls:
            message["tool_calls"] = [
                {"id": call.call_id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}
                for call in calls]
        turns[-1].append(message)
        for call in calls:
            used.add(call.call_id)
            turns[-1].append({"role": "tool", "tool_call_id": call.call_id,
                              "content": results[call.call_id].content})

    def add_loose_calls() -> None:
        if loose:
            add_answer("", list(loose))
            loose.clear()

    for index, event in enumerate(events):
        if isinstance(event, UserText | TranscriptFinal):
            add_loose_calls()
            if event.text.strip():
                turns.append([{"role": "user", "content": event.text}])
        elif isinstance(event, AssistantMessage):
            add_loose_calls()
            text = event.text
            if event.turn_id in spoken and last_answer[event.turn_id] == index:
                text = spoken[event.turn_id]
            add_answer(text, event.tool_calls)
        elif isinstance(event, ToolCall):
            # A writer that records calls only as tool.call events still gets its calls
            # paired with their results.
            if event.call_id not in announced:
                loose.append(ToolCallRef(call_id=event.call_id, name=event.name,
                                         arguments=event.arguments))
        elif isinstance(event, TurnInterrupted):
            add_loose_calls()
            # Interrupted before any assistant.message was written: what was heard still counts.
            if event.turn_id in spoken and event.turn_id not in last_answer:
                add_answer(spoken.pop(event.turn_id), [])
    add_loose_calls()

    system: Message = {"role": "system", "content": system_prompt}
    kept = [turn for turn in turns if turn]

    def cost(message: Message) -> int:
        tokens = MESSAGE_OVERHEAD_TOKENS + count_tokens(message.get("content") or "")
        for call in message.get("tool_calls", ()):
            tokens += count_tokens(call["function"]["name"]) + count_tokens(call["function"]["arguments"])
        return tokens

    costs = [sum(cost(message) for message in turn) for turn in kept]
    total = cost(system) + sum(costs)
    first = 0
    while first < len(kept) - 1 and total > budget_tokens:
        total -= costs[first]
        first += 1
    return [system, *(message for turn in kept[first:] for message in turn)]
