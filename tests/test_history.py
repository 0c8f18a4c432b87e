"""The chat-completions messages built from a session's log: order, roles, tool pairing,
interrupted answers, trimming to a token budget."""

from __future__ import annotations

import json
from typing import Any

from actors.dialogue.history import MESSAGE_OVERHEAD_TOKENS, approx_tokens, build_messages
from bus.log import Entry
from bus.subjects import subject_of
from schemas import (
    AssistantMessage,
    Error,
    Event,
    SessionStarted,
    SpeechIgnored,
    ToolCall,
    ToolCallRef,
    ToolResult,
    TranscriptFinal,
    TtsSentence,
    TurnInterrupted,
    TurnPaused,
    TurnResumed,
    TurnStarted,
    UserText,
    encode,
)

SID = "s1"
SYSTEM = "You are vagent, a friendly voice assistant."
BIG = 1_000_000  # a budget nothing reaches


def log(*events: Event) -> list[Entry]:
    return [Entry("SESSIONS", seq, subject_of(event), {}, encode(event), event)
            for seq, event in enumerate(events, start=1)]


def user(text: str, turn: str) -> UserText:
    return UserText(session_id=SID, id=turn, text=text)


def answer(text: str, turn: str, *, calls: list[ToolCallRef] | None = None,
           interrupted: bool = False) -> AssistantMessage:
    return AssistantMessage(session_id=SID, turn_id=turn, text=text, interrupted=interrupted,
                            tool_calls=calls or [])


def result(call_id: str, content: str, turn: str, name: str = "get_time") -> ToolResult:
    return ToolResult(session_id=SID, turn_id=turn, call_id=call_id, name=name, content=content)


def call(call_id: str, name: str = "get_time", arguments: str = "{}") -> ToolCallRef:
    return ToolCallRef(call_id=call_id, name=name, arguments=arguments)


def roles(messages: list[dict[str, Any]]) -> list[str]:
    return [message["role"] for message in messages]


def test_conversation_in_order_with_roles() -> None:
    entries = log(
        SessionStarted(session_id=SID),
        user("hello", "t1"),
        TurnStarted(session_id=SID, turn_id="t1"),
        answer("Hi! How can I help?", "t1"),
        TtsSentence(session_id=SID, turn_id="t1", text="Hi!"),
        TranscriptFinal(session_id=SID, id="t2", text="what's the weather"),
        answer("Sunny.", "t2"),
        Error(session_id=SID, code="x", message="ignored"),
        user("thanks", "t3"),
    )
    assert build_messages(SYSTEM, entries, budget_tokens=BIG) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "what's the weather"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "thanks"},
    ]


def test_empty_inputs_and_answers_are_left_out() -> None:
    entries = log(user("hi", "t1"), answer("", "t1"),
                  TranscriptFinal(session_id=SID, id="t2", text="  "), user("again", "t3"))
    assert build_messages(SYSTEM, entries, budget_tokens=BIG)[1:] == [
        {"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]


def test_no_history_gives_the_system_prompt_alone() -> None:
    assert build_messages(SYSTEM, [], budget_tokens=BIG) == [{"role": "system", "content": SYSTEM}]


def test_system_prompt_is_byte_identical_across_calls_and_budgets() -> None:
    entries = log(user("hello", "t1"), answer("Hi.", "t1"), user("more", "t2"))
    firsts = [build_messages(SYSTEM, entries[:n], budget_tokens=budget)[0]
              for n in range(len(entries) + 1) for budget in (1, 50, BIG)]
    assert all(first == {"role": "system", "content": SYSTEM} for first in firsts)
    assert all(first["content"] is SYSTEM for first in firsts)


def test_tool_calls_are_followed_by_their_results() -> None:
    entries = log(
        user("what time is it in Paris and Tokyo?", "t1"),
        answer("Let me check.", "t1", calls=[call("c1", arguments='{"tz": "Europe/Paris"}'),
                                             call("c2", arguments='{"tz": "Asia/Tokyo"}')]),
        ToolCall(session_id=SID, turn_id="t1", call_id="c1", name="get_time"),
        ToolCall(session_id=SID, turn_id="t1", call_id="c2", name="get_time"),
        result("c2", "09:00", "t1"),  # results may come back in any order
        result("c1", "02:00", "t1"),
        answer("It is 2 AM in Paris and 9 AM in Tokyo.", "t1"),
    )
    messages = build_messages(SYSTEM, entries, budget_tokens=BIG)
    assert messages[1:] == [
        {"role": "user", "content": "what time is it in Paris and Tokyo?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}},
            {"id": "c2", "type": "function",
             "function": {"name": "get_time", "arguments": '{"tz": "Asia/Tokyo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "02:00"},
        {"role": "tool", "tool_call_id": "c2", "content": "09:00"},
        {"role": "assistant", "content": "It is 2 AM in Paris and 9 AM in Tokyo."},
    ]
    json.dumps(messages)  # plain JSON, ready for the SDK


def test_call_without_text_has_null_content() -> None:
    entries = log(user("time?", "t1"), answer("", "t1", calls=[call("c1")]), result("c1", "10:30", "t1"))
    assert build_messages(SYSTEM, entries, budget_tokens=BIG)[2] == {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}


def test_calls_without_results_are_not_sent() -> None:
    entries = log(
        user("time?", "t1"),
        answer("", "t1", calls=[call("c1"), call("c2")]),
        result("c1", "10:30", "t1"),  # c2 never answered (the actor crashed, a timeout…)
        answer("It's 10:30.", "t1"),
        user("and the date?", "t2"),
        answer("Checking.", "t2", calls=[call("c3", "get_date")]),  # no result at all
        result("c9", "orphan", "t2"),  # a result whose call is nowhere
    )
    messages = build_messages(SYSTEM, entries, budget_tokens=BIG)
    assert [m["id"] for m in messages[2]["tool_calls"]] == ["c1"]
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "10:30"}
    assert messages[-1] == {"role": "assistant", "content": "Checking."}  # the call dropped, text kept
    assert sum(1 for m in messages if m["role"] == "tool") == 1
    assert all(m.get("tool_call_id") != "c9" for m in messages)


def test_a_result_logged_after_the_next_input_still_follows_its_call() -> None:
    entries = log(
        user("time?", "t1"),
        answer("", "t1", calls=[call("c1")]),
        user("never mind", "t2"),  # barge-in while the tool ran
        result("c1", "10:30", "t1"),
    )
    assert roles(build_messages(SYSTEM, entries, budget_tokens=BIG)) == [
        "system", "user", "assistant", "tool", "user"]


def test_tool_call_events_alone_are_paired_too() -> None:
    # A writer that records calls only as tool.call events, not in assistant.message.
    entries = log(
        user("time?", "t1"),
        ToolCall(session_id=SID, turn_id="t1", call_id="c1", name="get_time", arguments='{"a": 1}'),
        result("c1", "10:30", "t1"),
        ToolCall(session_id=SID, turn_id="t1", call_id="c2", name="get_time"),  # never answered
        answer("It's 10:30.", "t1"),
    )
    assert build_messages(SYSTEM, entries, budget_tokens=BIG)[1:] == [
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "10:30"},
        {"role": "assistant", "content": "It's 10:30."},
    ]


def test_interrupted_answer_keeps_what_was_produced() -> None:
    entries = log(user("tell me a story", "t1"), answer("Once upon a", "t1", interrupted=True),
                  user("stop", "t2"))
    assert build_messages(SYSTEM, entries, budget_tokens=BIG)[2] == {
        "role": "assistant", "content": "Once upon a"}


def test_spoken_text_of_an_interruption_replaces_the_turns_answer() -> None:
    entries = log(
        user("hello", "t0"), answer("Hi there.", "t0"),
        user("tell me a story", "t1"),
        TurnInterrupted(session_id=SID, turn_id="t1", reason="barge_in",
                        spoken_text="Once upon a time,"),  # may be logged before the answer
        answer("Once upon a time, there was a fox. It lived", "t1", interrupted=True),
        user("stop", "t2"),
    )
    messages = build_messages(SYSTEM, entries, budget_tokens=BIG)
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["Hi there.", "Once upon a time,"]


def test_spoken_text_applies_to_the_last_answer_of_a_tool_turn() -> None:
    entries = log(
        user("time?", "t1"),
        answer("Let me look.", "t1", calls=[call("c1")]), result("c1", "10:30", "t1"),
        answer("It's 10:30 and a lovely day.", "t1", interrupted=True),
        TurnInterrupted(session_id=SID, turn_id="t1", spoken_text="It's 10:30"),
    )
    messages = build_messages(SYSTEM, entries, budget_tokens=BIG)
    assert messages[2]["content"] == "Let me look."
    assert messages[-1] == {"role": "assistant", "content": "It's 10:30"}


def test_nothing_spoken_means_no_answer() -> None:
    entries = log(user("story?", "t1"), answer("Once", "t1", interrupted=True),
                  TurnInterrupted(session_id=SID, turn_id="t1", spoken_text=""), user("hm", "t2"))
    assert roles(build_messages(SYSTEM, entries, budget_tokens=BIG)) == ["system", "user", "user"]


def test_interruption_without_an_answer_event_keeps_what_was_spoken() -> None:
    entries = log(user("story?", "t1"),
                  TurnInterrupted(session_id=SID, turn_id="t1", spoken_text="Once upon"),
                  user("stop", "t2"))
    assert build_messages(SYSTEM, entries, budget_tokens=BIG)[1:] == [
        {"role": "user", "content": "story?"}, {"role": "assistant", "content": "Once upon"},
        {"role": "user", "content": "stop"}]


def test_a_paused_turn_that_resumed_keeps_its_whole_answer() -> None:
    """A cough paused the answer and it resumed: the user heard all of it."""
    story = "Once upon a time, there was a fox. It lived in a wood."
    entries = log(
        user("tell me a story", "t1"),
        TtsSentence(session_id=SID, turn_id="t1", text="Once upon a time, there was a fox.",
                    index=0),
        TurnPaused(session_id=SID, turn_id="t1"),
        SpeechIgnored(session_id=SID, turn_id="t1", reason="noise"),
        TurnResumed(session_id=SID, turn_id="t1", reason="no_words", paused_ms=700),
        TtsSentence(session_id=SID, turn_id="t1", text="It lived in a wood.", index=1),
        answer(story, "t1"),
        user("and then?", "t2"),
    )
    messages = build_messages(SYSTEM, entries, budget_tokens=BIG)
    assert [m["content"] for m in messages if m["role"] == "assistant"] == [story]


def test_a_paused_turn_that_words_interrupted_keeps_what_was_played() -> None:
    entries = log(
        user("tell me a story", "t1"),
        TtsSentence(session_id=SID, turn_id="t1", text="Once upon a time, there was a fox.",
                    index=0),
        TurnPaused(session_id=SID, turn_id="t1"),
        TurnInterrupted(session_id=SID, turn_id="t1", reason="barge_in"),
        answer("Once upon a time, there was a fox. It lived in a wood.", "t1", interrupted=True),
        TranscriptFinal(session_id=SID, id="t2", text="stop, tell me about Paris"),
    )
    messages = build_messages(SYSTEM, entries, budget_tokens=BIG)
    assert messages[2] == {"role": "assistant", "content": "Once upon a time, there was a fox."}
    assert messages[3] == {"role": "user", "content": "stop, tell me about Paris"}


def _conversation() -> list[Entry]:
    return log(
        user("one " * 40, "t1"), answer("first answer " * 10, "t1"),
        user("time?", "t2"),
        answer("", "t2", calls=[call("c1")]), result("c1", "10:30 " * 30, "t2"),
        answer("It's 10:30.", "t2"),
        user("three", "t3"), answer("third answer", "t3"),
        user("four", "t4"),
    )


def test_trimming_drops_whole_oldest_turns_first() -> None:
    entries = _conversation()
    full = build_messages(SYSTEM, entries, budget_tokens=BIG)
    costs = [MESSAGE_OVERHEAD_TOKENS + approx_tokens(m.get("content") or "")
             + sum(approx_tokens(c["function"]["name"]) + approx_tokens(c["function"]["arguments"])
                   for c in m.get("tool_calls", ()))
             for m in full]
    total = sum(costs)
    assert build_messages(SYSTEM, entries, budget_tokens=total) == full
    # One token short: the first turn (user + answer) goes, nothing else.
    trimmed = build_messages(SYSTEM, entries, budget_tokens=total - 1)
    assert trimmed == [full[0], *full[3:]]
    assert trimmed[1] == {"role": "user", "content": "time?"}


def test_trimming_keeps_a_call_with_its_results() -> None:
    entries = _conversation()
    for budget in range(0, 400, 3):
        messages = build_messages(SYSTEM, entries, budget_tokens=budget)
        assert messages[0] == {"role": "system", "content": SYSTEM}
        assert messages[1]["role"] == "user"  # whole turns only
        calls = [c["id"] for m in messages for c in m.get("tool_calls", ())]
        answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
        assert calls == answered


def test_latest_turn_is_kept_even_over_budget() -> None:
    entries = _conversation() + log(answer("x" * 4000, "t4"))
    assert build_messages(SYSTEM, entries, budget_tokens=10)[1:] == [
        {"role": "user", "content": "four"}, {"role": "assistant", "content": "x" * 4000}]


def test_budget_uses_the_given_counter() -> None:
    entries = log(user("a", "t1"), answer("b", "t1"), user("c", "t2"))
    # Every message costs overhead + 100: room for the system prompt and one turn only.
    messages = build_messages(SYSTEM, entries, budget_tokens=2 * (MESSAGE_OVERHEAD_TOKENS + 100),
                              count_tokens=lambda text: 100)
    assert messages[1:] == [{"role": "user", "content": "c"}]


def test_messages_before_the_first_input_form_a_turn_of_their_own() -> None:
    entries = log(answer("Welcome! Ask me anything.", "greet"), user("hi", "t1"))
    assert roles(build_messages(SYSTEM, entries, budget_tokens=BIG)) == ["system", "assistant", "user"]
    assert roles(build_messages(SYSTEM, entries, budget_tokens=1)) == ["system", "user"]


def test_undecodable_entries_are_skipped() -> None:
    entries = [*log(user("hi", "t1")), Entry("SESSIONS", 9, "x", {}, b"junk", None, "bad bytes")]
    assert roles(build_messages(SYSTEM, entries, budget_tokens=BIG)) == ["system", "user"]


def test_approx_tokens() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("abcd") == 1
    assert approx_tokens("abcde") == 2
    assert approx_tokens("你好世界") == 4
    assert approx_tokens("你好 world") == 2 + 2  # two ideographs, then " world" in two
    assert approx_tokens("こんにちは") == 5


def test_a_barge_in_keeps_what_the_tts_began_to_play() -> None:
    # The LLM had written three sentences; the user heard the first two start.
    entries = log(
        user("tell me a story", "t1"),
        TtsSentence(session_id=SID, turn_id="t1", text="Once upon a time.", index=0),
        TtsSentence(session_id=SID, turn_id="t1", text="There was a fox.", index=1, offset_ms=900),
        TurnInterrupted(session_id=SID, turn_id="t1", reason="barge_in"),
        answer("Once upon a time. There was a fox. It lived in a wood.", "t1", interrupted=True),
        user("stop", "t2"),
    )
    messages = build_messages(SYSTEM, entries, budget_tokens=BIG)
    assert [m["content"] for m in messages if m["role"] == "assistant"] == [
        "Once upon a time. There was a fox."]


def test_tts_sentences_of_an_uninterrupted_turn_change_nothing() -> None:
    entries = log(
        user("hi", "t1"),
        TtsSentence(session_id=SID, turn_id="t1", text="Hello.", index=0),
        answer("Hello. **How** are you?", "t1"),
    )
    messages = build_messages(SYSTEM, entries, budget_tokens=BIG)
    assert messages[-1]["content"] == "Hello. **How** are you?"
