"""Recorded sessions made into a suite (`vagent eval --from-sessions`): each session a
conversation, each answered turn a turn of it — what the user typed, or what the ASR
heard them say, as `say` — with the recorded answer as its reference (`similar_to`) and the
tools it called (`tool`). Run against a changed prompt or model, the suite says which
conversations went another way.

The sessions are only read (their logs, their assistant's); the suite's assistant is theirs,
so they must share one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML ships no types

from bus.client import Bus
from bus.log import load
from replay.log import fold_turns, session_log
from schemas import DEFAULT_ASSISTANT_ID, AssistantCreated, AssistantUpdated, SessionStarted, ToolCall


class FromSessionsError(Exception):
    pass


@dataclass
class Made:
    text: str  # the suite, as YAML
    conversations: int
    turns: int
    skipped: list[str] = field(default_factory=list)  # turns left out, and why


async def _assistant(bus: Bus, assistant_id: str) -> dict[str, Any]:
    entries, _ = await load(bus, "assistant", assistant_id)
    settings: dict[str, Any] = {}
    for entry in entries:
        event = entry.event
        if isinstance(event, AssistantCreated | AssistantUpdated):
            for key in ("name", "persona", "language", "tools"):
                value = getattr(event, key)
                if value is not None:
                    settings[key] = value
    if not settings:
        raise FromSessionsError(f"no assistant {assistant_id!r} in the log")
    return {k: v for k, v in settings.items() if v not in ("", [])}


async def suite_from_sessions(bus: Bus, session_ids: list[str], name: str = "recorded") -> Made:
    if not session_ids:
        raise FromSessionsError("no sessions to make a suite of")
    conversations: list[dict[str, Any]] = []
    skipped: list[str] = []
    assistants: set[str] = set()
    for sid in dict.fromkeys(session_ids):
        entries = await session_log(bus, sid)
        events = [e.event for e in entries if e.event is not None]
        started = next((e for e in events if isinstance(e, SessionStarted)), None)
        assistants.add((started.assistant_id if started else None) or DEFAULT_ASSISTANT_ID)
        turns: list[dict[str, Any]] = []
        for n, row in enumerate(fold_turns(entries), start=1):
            said, answer = (row["input_text"] or "").strip(), row["answer_text"]
            if row["input_type"] not in ("user.text", "transcript.final") or not said:
                skipped.append(f"{sid} turn {n}: no typed or spoken input")
                continue
            if answer is None or row["interrupted"]:
                why = "interrupted" if row["interrupted"] else "not answered"
                skipped.append(f"{sid} turn {n}: {why}")
                continue
            turn: dict[str, Any] = {"say": said, "similar_to": answer}
            tools = list(dict.fromkeys(e.name for e in events
                                       if isinstance(e, ToolCall) and e.turn_id == row["turn_id"]))
            if tools:
                turn["tool"] = tools[0] if len(tools) == 1 else tools
            turns.append(turn)
        if turns:
            conversations.append({"name": sid, "turns": turns})
        else:
            skipped.append(f"{sid}: no answered turn")
    if len(assistants) > 1:
        raise FromSessionsError(f"the sessions talk to different assistants "
                                f"({', '.join(sorted(assistants))}): make a suite of each one's sessions")
    if not conversations:
        raise FromSessionsError("none of the sessions has an answered turn")
    suite: dict[str, Any] = {"name": name}
    (aid,) = assistants
    if aid != DEFAULT_ASSISTANT_ID:
        suite["assistant"] = await _assistant(bus, aid)
    suite["conversations"] = conversations
    made = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (f"# Made by `vagent eval --from-sessions` on {made} from {len(conversations)} recorded "
              f"session(s){'' if aid == DEFAULT_ASSISTANT_ID else f' of assistant {aid}'}.\n"
              "# similar_to: the recorded answer, judged by the judge LLM (--judge-llm, or the\n"
              "# configured [llm]), else by text similarity. Edit freely: add expectations, drop turns.\n")
    body = yaml.safe_dump(suite, sort_keys=False, allow_unicode=True, width=100)
    return Made(text=header + body, conversations=len(conversations),
                turns=sum(len(c["turns"]) for c in conversations), skipped=skipped)
