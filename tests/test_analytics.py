"""Usage, latency and cost analytics: a generated history of sessions with known totals is
published to a real NATS, folded by the real projection service, and read back through the
API (as its owner, as an operator, refused to others) and through `vagent stats`."""

from __future__ import annotations

import asyncio
import calendar
import json
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bus.client import Bus
from bus.server import EmbeddedServer
from cli.stats import money_cell
from projections.analytics import parse_since
from schemas import (
    AssistantCreated,
    AssistantMessage,
    AssistantSentence,
    Error,
    SessionEnded,
    SessionEvent,
    SessionStarted,
    SpeechStopped,
    ToolCallRef,
    TranscriptFinal,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnStarted,
    Usage,
    UserText,
    new_id,
)
from settings.config import PriceConfig
from telemetry.prices import Prices
from tests.api_harness import Api, api_config, serve_api
from tests.procs import vagent

MS = 1_000_000
DAY = 86_400 * 10**9
ANALYTICS = "/api/v1/analytics"
PRICES = [
    PriceConfig(provider="openai", model="gpt-x", prompt_per_million=2.0, completion_per_million=8.0),
    PriceConfig(provider="openai", model="*", prompt_per_million=1.0, completion_per_million=4.0),
    PriceConfig(provider="deepgram", audio_in_per_minute=0.0043),
    PriceConfig(provider="elevenlabs", audio_out_per_minute=0.18),
]
# (provider, model) of each session's answers, by session number: an exact price, the
# provider's `*` price, and an unpriced provider.
MODELS = [("openai", "gpt-x"), ("openai", "gpt-y"), ("echo", "echo-1")]
TRANSPORTS = ["ws", "webrtc", "xiaozhi"]
STAGES = ("transcript", "first_token", "first_sentence", "first_audio", "first_delta")


def quantile(values: list[float], p: float) -> float | None:
    """Linear interpolation between the closest ranks (DuckDB's quantile_cont)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = p * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Expected:
    """What the events say about one group."""

    sessions: int = 0
    turns: int = 0
    audio_in_ms: int = 0
    audio_out_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    interruptions: int = 0
    errors: int = 0
    tool_calls: int = 0
    latency: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})


@dataclass
class History:
    events: list[SessionEvent]
    groups: dict[str, dict[str, Expected]]  # by → key → expected
    owner: dict[str, str | None]  # session id → user id


def generate(users: list[str], assistants: list[str], now: int) -> History:
    """Sessions over three days (and one outside the window), owned by two users and by
    nobody (a device), with voice and typed turns, tools, interruptions and errors."""
    events: list[SessionEvent] = []
    groups: dict[str, dict[str, Expected]] = defaultdict(lambda: defaultdict(Expected))
    owner: dict[str, str | None] = {}
    day0 = (now // DAY - 3) * DAY + 6 * 3600 * 10**9  # 06:00 UTC three days ago
    for i in range(13):
        sid = f"an{i:02d}" + new_id()
        old = i == 12  # ten days ago: outside the default window
        start = now - 10 * DAY if old else day0 + (i % 3) * DAY + i * 60 * 10**9
        user = None if i % 4 == 3 else users[i % 2]
        provider, model = MODELS[i % 3]
        keys = {"day": time.strftime("%Y-%m-%d", time.gmtime(start / 1e9)), "user": user or "",
                "assistant": assistants[i % 2], "transport": TRANSPORTS[i % 3], "model": model}
        owner[sid] = user
        started = SessionStarted(session_id=sid, transport=TRANSPORTS[i % 3], user_id=user,
                                 assistant_id=assistants[i % 2], ts=start)
        session = [started,
                   AssistantMessage(session_id=sid, turn_id=started.id, text="Hi!", ts=start + 5 * MS)]
        # what the session adds to its groups, and its turns' (each under the session's model)
        total = Expected(sessions=1)
        t = start + 1000 * MS
        for j in range(1 + i % 3):
            voice = (i + j) % 2 == 0
            ttft = 100.0 + 10 * j + i
            prompt, completion = 100 + 10 * i + j, 20 + j
            tools = 1 if (i + j) % 4 == 0 else 0
            cut = (i + j) % 5 == 0
            if voice:
                speech_ms = 800 + 100 * j + 7 * i
                stopped = SpeechStopped(session_id=sid, ts=t, duration_ms=speech_ms, audio_ms=speech_ms)
                q: UserText | TranscriptFinal = TranscriptFinal(
                    session_id=sid, text=f"voice {j}", provider="deepgram", ts=t + (120 + 3 * i) * MS,
                    speech_started_ts=t - speech_ms * MS, speech_stopped_ts=t)
                session += [stopped, q]
                total.audio_in_ms += speech_ms
                total.latency["transcript"].append(120.0 + 3 * i)
            else:
                q = UserText(session_id=sid, text=f"typed {j}", ts=t)
                session.append(q)
            begin = q.ts + (2 + j) * MS
            end = t if voice else begin
            session.append(TurnStarted(session_id=sid, turn_id=q.id, input_id=q.id, ts=begin))
            if tools:
                session.append(AssistantMessage(
                    session_id=sid, turn_id=q.id, text="", provider=provider, model=model, ttft_ms=ttft,
                    usage=Usage(prompt_tokens=50, completion_tokens=5), ts=begin + 150 * MS,
                    tool_calls=[ToolCallRef(call_id=f"c{j}", name="get_time")]))
                total.prompt_tokens += 50
                total.completion_tokens += 5
                total.cost += Prices(PRICES).tokens(provider, model, 50, 5)
            sentence_ms, audio_ms = 300 + 11 * j + 5 * i, 450 + 13 * j + 6 * i
            spoken = 1500 + 100 * j + 10 * i
            session += [
                AssistantSentence(session_id=sid, turn_id=q.id, text="Sure.", ts=end + sentence_ms * MS),
                TtsStarted(session_id=sid, turn_id=q.id, provider="elevenlabs", ts=end + audio_ms * MS),
            ]
            if cut:
                session.append(TurnInterrupted(session_id=sid, turn_id=q.id, reason="barge_in",
                                               ts=end + (audio_ms + 100) * MS))
            session += [
                AssistantMessage(session_id=sid, turn_id=q.id, text="Sure.", provider=provider, model=model,
                                 ttft_ms=ttft if not tools else 999.0, interrupted=cut,
                                 usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
                                 ts=end + (audio_ms + 200) * MS),
                TtsStopped(session_id=sid, turn_id=q.id, spoken_ms=spoken, ts=end + (audio_ms + 300) * MS),
            ]
            total.turns += 1
            total.audio_out_ms += spoken
            total.prompt_tokens += prompt
            total.completion_tokens += completion
            total.cost += Prices(PRICES).tokens(provider, model, prompt, completion)
            total.interruptions += cut
            total.tool_calls += tools
            total.latency["first_token"].append(ttft)
            total.latency["first_sentence"].append(float(sentence_ms))
            total.latency["first_audio"].append(float(audio_ms))
            if not voice:
                total.latency["first_delta"].append(ttft + (2 + j))
            t += 10_000 * MS
        if i % 3 == 1:
            session.append(Error(session_id=sid, code="llm_unavailable", message="down", ts=t))
            total.errors += 1
        session.append(SessionEnded(session_id=sid, ts=t + MS))
        total.cost += (Prices(PRICES).audio("deepgram", "in", total.audio_in_ms / 1000)
                       + Prices(PRICES).audio("elevenlabs", "out", total.audio_out_ms / 1000))
        events += session
        if old:
            continue
        for by, key in (*keys.items(), ("total", "")):
            g = groups[by][key]
            for name in ("sessions", "turns", "audio_in_ms", "audio_out_ms", "prompt_tokens",
                         "completion_tokens", "cost", "interruptions", "errors", "tool_calls"):
                setattr(g, name, getattr(g, name) + getattr(total, name))
            for stage in STAGES:
                g.latency[stage] += total.latency[stage]
    return History(events, groups, owner)


def check(row: dict[str, Any], want: Expected) -> None:
    assert (row["sessions"], row["turns"], row["prompt_tokens"], row["completion_tokens"],
            row["interruptions"], row["errors"], row["tool_calls"]) == (
        want.sessions, want.turns, want.prompt_tokens, want.completion_tokens, want.interruptions,
        want.errors, want.tool_calls)
    assert row["audio_in_minutes"] == pytest.approx(want.audio_in_ms / 60_000, abs=0.001)
    assert row["audio_out_minutes"] == pytest.approx(want.audio_out_ms / 60_000, abs=0.001)
    assert row["cost"] == pytest.approx(want.cost, abs=1e-6)
    for stage in STAGES:
        got, values = row["latency_ms"][stage], want.latency[stage]
        assert got["count"] == len(values), stage
        for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            expected = quantile(values, p)
            want_p = None if expected is None else pytest.approx(expected, abs=0.051)
            assert got[name] == want_p, (stage, name)


@dataclass
class World:
    api: Api
    url: str
    data_dir: Path
    history: History
    headers: dict[str, dict[str, str]]  # user id → Authorization
    emails: dict[str, str]


@pytest.fixture(scope="module")
async def world(module_nats: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[World]:
    config = msgspec.structs.replace(api_config(), prices=PRICES)
    data_dir = tmp_path_factory.mktemp("analytics")
    async with serve_api(module_nats.url, data_dir, config) as api:
        headers, emails = {}, {}
        for name in ("ada", "bob"):
            email = f"{name}{new_id().lower()}@example.com"
            auth = await api.user(email)
            me = (await api.client.get("/api/v1/me", headers=auth)).json()
            headers[me["user_id"]], emails[me["user_id"]] = auth, email
        bus = await Bus.connect(module_nats.url, name="test-analytics")
        try:
            assistants = [f"as{n}" + new_id() for n in ("alpha", "beta")]
            for aid, name in zip(assistants, ("Alpha", "Beta"), strict=True):
                await bus.publish(AssistantCreated(assistant_id=aid, name=name))
            history = generate(list(headers), assistants, time.time_ns())
            for sid in history.owner:  # a session's events in one batch
                await bus.append_batch([e for e in history.events if e.session_id == sid])
        finally:
            await bus.close()
        yield World(api, module_nats.url, data_dir, history, headers, emails)


async def analytics(world: World, user_id: str, **params: str) -> Any:
    r = await world.api.client.get(ANALYTICS, params=params, headers=world.headers[user_id])
    assert r.status_code == 200, r.text
    return r.json()


async def grant(world: World, user_id: str, role: str) -> None:
    done = await asyncio.to_thread(vagent, "users", "role", world.emails[user_id], role, "--nats", world.url,
                  "--data-dir", str(world.data_dir))
    assert done.returncode == 0, done.stderr
    assert ("is now an operator" if role == "operator" else "is now a user") in done.stdout


async def test_an_operator_reads_every_group_as_the_events_say(world: World) -> None:
    operator, _ = world.headers
    await grant(world, operator, "operator")
    me = (await world.api.client.get("/api/v1/me", headers=world.headers[operator])).json()
    assert me["role"] == "operator"
    want = world.history.groups
    for by in ("day", "assistant", "model", "user", "transport"):
        answer = await analytics(world, operator, by=by)
        assert (answer["by"], answer["scope"], answer["currency"]) == (by, "all", "USD")
        keys = [r["key"] for r in answer["rows"]]
        assert keys == sorted(want[by]) and keys == sorted(keys), by
        for row in answer["rows"]:
            check(row, want[by][row["key"]])
        check(answer["totals"], want["total"][""])
        assert "key" not in answer["totals"] and "label" not in answer["totals"]
    # cost is in the answer at all, from the exact, the `*` and no price
    assert want["total"][""].cost > 0
    labels = {r["key"]: r["label"] for r in (await analytics(world, operator, by="assistant"))["rows"]}
    assert sorted(labels.values()) == ["Alpha", "Beta"]
    users = {r["key"]: r["label"] for r in (await analytics(world, operator, by="user"))["rows"]}
    assert users == {**{uid: world.emails[uid] for uid in world.headers}, "": "(none)"}
    days = (await analytics(world, operator, by="day"))["rows"]
    assert len(days) == 3 and [d["label"] for d in days] == [d["key"] for d in days]
    # a shorter window leaves the first day out; an ISO date takes it back in
    midnight = calendar.timegm(time.strptime(days[1]["key"], "%Y-%m-%d"))
    recent = await analytics(world, operator, by="day", since=f"{(time.time() - midnight) / 3600:.2f}h")
    assert [d["key"] for d in recent["rows"]] == [d["key"] for d in days[1:]]
    assert (await analytics(world, operator, by="day", since=days[1]["key"]))["rows"] == days[1:]
    assert (await analytics(world, operator, by="day", since=days[0]["key"]))["rows"] == days
    # one user's, by id or by email
    one = next(iter(world.headers))
    mine = await analytics(world, operator, by="user", user=world.emails[one])
    assert [r["key"] for r in mine["rows"]] == [one]
    check(mine["totals"], want["user"][one])


async def test_a_user_sees_their_own_and_is_refused_others(world: World) -> None:
    _, user = world.headers
    await grant(world, user, "user")
    answer = await analytics(world, user, by="model")
    assert answer["scope"] == "own"
    assert answer["rows"] and {r["key"] for r in answer["rows"]} <= {m for _, m in MODELS}
    check(answer["totals"], world.history.groups["user"][user])
    assert (await analytics(world, user, user=user))["scope"] == "own"
    other = next(uid for uid in world.headers if uid != user)
    for who in (other, world.emails[other]):
        r = await world.api.client.get(ANALYTICS, params={"user": who}, headers=world.headers[user])
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await world.api.client.get(ANALYTICS)
    assert r.status_code == 401


@pytest.mark.parametrize(("params", "at"), [({"since": "yesterday"}, "since"), ({"since": "7x"}, "since"),
                                            ({"by": "week"}, "by")])
async def test_bad_parameters_are_refused_clearly(world: World, params: dict[str, str], at: str) -> None:
    uid = next(iter(world.headers))
    r = await world.api.client.get(ANALYTICS, params=params, headers=world.headers[uid])
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["details"]["at"] == at and ("30m" in error["message"] or "day" in error["message"])


async def test_the_openapi_document_has_the_route(world: World) -> None:
    spec = (await world.api.client.get("/api/v1/openapi.json")).json()
    operation = spec["paths"]["/api/v1/analytics"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"since", "by", "user"}
    assert {"200", "401", "403", "422"} <= set(operation["responses"])
    assert "role" in spec["components"]["schemas"]["User"]["properties"]


async def test_vagent_stats_prints_the_table_and_the_json(world: World, tmp_path: Path) -> None:
    settings = tmp_path / "vagent.toml"
    settings.write_text("\n".join(
        f'[[prices]]\nprovider = "{p.provider}"\nmodel = "{p.model}"\nprompt_per_million = '
        f"{p.prompt_per_million}\ncompletion_per_million = {p.completion_per_million}\n"
        f"audio_in_per_minute = {p.audio_in_per_minute}\naudio_out_per_minute = {p.audio_out_per_minute}\n"
        for p in PRICES))
    where = ("--nats", world.url, "--data-dir", str(world.data_dir))
    # in a thread: the read models answering it are served by this test's event loop
    done = await asyncio.to_thread(vagent, "stats", "--by", "assistant", "--json", *where,
                                   VAGENT_CONFIG=str(settings))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["scope"] == "all" and [r["label"] for r in answer["rows"]] == ["Alpha", "Beta"]
    for row in answer["rows"]:
        check(row, world.history.groups["assistant"][row["key"]])
    check(answer["totals"], world.history.groups["total"][""])

    done = await asyncio.to_thread(vagent, "stats", "--by", "assistant", *where, VAGENT_CONFIG=str(settings))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    total = world.history.groups["total"][""]
    [row] = [line for line in lines if line.startswith("total")]
    assert row.split()[1:3] == [str(total.sessions), str(total.turns)]
    assert f"{total.cost:.4f}" in row
    assert any(line.startswith("Alpha") for line in lines) and any(line.startswith("Beta") for line in lines)
    first_audio = next(line for line in lines if line.startswith("first_audio"))
    assert first_audio.split()[1] == f"{quantile(total.latency['first_audio'], 0.5):.0f}"

    done = vagent("stats", "--since", "yesterday", *where)
    assert done.returncode == 2 and "since 'yesterday' is not a time" in done.stderr
    done = await asyncio.to_thread(vagent, "users", "list", "--json", *where)
    assert done.returncode == 0 and {u["role"] for u in json.loads(done.stdout)} <= {"user", "operator"}


def test_prices_match_the_model_else_any_model_of_the_provider() -> None:
    assert Prices(PRICES).of("openai", "gpt-x") is PRICES[0]
    assert Prices(PRICES).of("openai", "gpt-y") is PRICES[1]
    assert Prices(PRICES).of("echo", "echo-1") is None and Prices(PRICES).of(None, None) is None
    assert Prices(PRICES).tokens("openai", "gpt-x", 1_000_000, 500_000) == pytest.approx(6.0)
    assert (Prices(PRICES).audio("deepgram", "in", 120)
            + Prices(PRICES).audio("elevenlabs", "out", 60)) == pytest.approx(0.0086 + 0.18)
    assert parse_since("24h", now=100_000.0) == int((100_000 - 86_400) * 1e9)


def test_a_cost_below_four_decimals_is_shown_not_rounded_to_nothing() -> None:
    assert [money_cell(v) for v in (0.0, 0.000143, 0.0609, 1.2e-7)] == [
        "0.0000", "0.00014", "0.0609", "1.2e-07"]
