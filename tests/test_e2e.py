"""The whole stack end to end through the real `vagent` command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bus.server import EmbeddedServer, free_port
from devservers.echo_llm import OpenAIServer
from tests.procs import ROOT, Proc, up, vagent
from tests.xiaozhi_client import XiaozhiDevice


@pytest.fixture(scope="module")
def nats(module_nats: EmbeddedServer) -> EmbeddedServer:
    return module_nats


@pytest.fixture(scope="module")
def stack(nats: EmbeddedServer, llm: OpenAIServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Path]]:
    data = tmp_path_factory.mktemp("data")
    with up(nats.url, data, llm.base_url) as proc:
        yield proc, data
    assert "vagent: stopped" in proc.output()


def test_say_streams_the_reply_and_the_log_holds_the_turn(stack: tuple[Proc, Path],
                                                          nats: EmbeddedServer) -> None:
    live = Proc(["tail", "vagent.session.s1.>", "--nats", nats.url, "--json", "--limit", "20"])
    try:
        live.wait_for("following")
        said = vagent("say", "hello", "--session", "s1", "--nats", nats.url)
        assert said.returncode == 0, said.stderr
        assert said.stdout == "You said: hello.\n"
        # The live tail saw the token deltas while they flowed.
        live.wait_for('"type": "assistant.message"')
        lines = [json.loads(line) for line in live.lines if line.startswith("{")]
        assert all("type" in line for line in lines)  # audio frames are left out without --audio
        types = [line["type"] for line in lines]
        # Coalesced (the first at once, then at most one per interval), all the text in order.
        deltas = sorted((line for line in lines if line["type"] == "assistant.delta"),
                        key=lambda d: d.get("index", 0))
        assert deltas and "".join(d["text"] for d in deltas) == "You said: hello."
        assert types.index("user.text") < types.index("assistant.delta") < types.index("assistant.message")
    finally:
        live.stop()

    logged = vagent("tail", "vagent.session.s1.evt.>", "--from-start", "--json", "--limit", "5",
                    "--nats", nats.url)
    events = [json.loads(line) for line in logged.stdout.splitlines()]
    assert [e["type"] for e in events] == ["session.started", "user.text", "turn.started",
                                           "assistant.sentence", "assistant.message"]
    user, final = events[1], events[4]
    assert events[3]["text"] == "You said: hello."
    assert user["text"] == "hello" and final["text"] == "You said: hello."
    assert final["causation_id"] == user["id"] and final["turn_id"] == user["id"]
    assert final["usage"]["completion_tokens"] == 3 and final["ttft_ms"] > 0

    readable = vagent("tail", "vagent.session.s1.evt.>", "--from-start", "--limit", "5",
                      "--nats", nats.url)
    assert "user.text" in readable.stdout and 'text="hello"' in readable.stdout


def test_say_without_a_session_starts_one_and_names_it(stack: tuple[Proc, Path],
                                                        nats: EmbeddedServer) -> None:
    first = vagent("say", "hi there", "--nats", nats.url)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "You said: hi there.\n"  # the id goes to stderr, not into the answer
    named = re.search(r"session (say-[0-9A-Z]{26}) \(--session \1 continues it\)", first.stderr)
    assert named, first.stderr
    again = vagent("say", "and again", "--session", named.group(1), "--nats", nats.url)
    assert again.returncode == 0 and "session say-" not in again.stderr
    logged = vagent("tail", f"vagent.session.{named.group(1)}.evt.user.text", "--from-start",
                    "--json", "--limit", "2", "--nats", nats.url)
    assert [json.loads(line)["text"] for line in logged.stdout.splitlines()] == ["hi there",
                                                                                 "and again"]


def test_sessions_lists_it_and_rebuild_gives_the_same_table(stack: tuple[Proc, Path],
                                                            nats: EmbeddedServer) -> None:
    _, data = stack
    assert vagent("say", "one more", "-s", "s2", "--nats", nats.url).returncode == 0
    for session in ("s1", "s2"):  # the voice of the answers is still being sent: let it finish
        spoken = vagent("tail", f"vagent.session.{session}.evt.tts.stopped", "--from-start",
                        "--limit", "1", "--nats", nats.url, timeout=60)
        assert "tts.stopped" in spoken.stdout
    before = vagent("sessions", "--wide", "--nats", nats.url, "--data-dir", str(data))
    assert before.returncode == 0, before.stderr
    rows = {line.split()[0]: line for line in before.stdout.splitlines()[2:]}
    assert {"s1", "s2"} <= set(rows)
    assert "You said: one more." in rows["s2"]
    rebuilt = vagent("projections", "rebuild", "--nats", nats.url, "--data-dir", str(data))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "sessions" in rebuilt.stdout
    after = vagent("sessions", "--wide", "--nats", nats.url, "--data-dir", str(data))
    assert after.stdout == before.stdout


def test_health_and_streams_report_the_running_stack(stack: tuple[Proc, Path],
                                                     nats: EmbeddedServer) -> None:
    report = vagent("health", "--json", "--nats", nats.url)
    assert report.returncode == 0, report.stdout
    body = json.loads(report.stdout)
    assert body["ok"] and body["nats"] and set(body["alive"]) >= {"dialogue", "projections"}
    streams = vagent("streams", "--nats", nats.url)
    assert streams.returncode == 0
    assert "SESSIONS" in streams.stdout and "dialogue" in streams.stdout


def test_undecodable_input_is_dead_lettered_and_the_stack_carries_on(
        stack: tuple[Proc, Path], nats: EmbeddedServer) -> None:
    import asyncio

    from bus.client import Bus

    async def poison() -> None:
        bus = await Bus.connect(nats.url)
        await bus.js.publish("vagent.session.bad.evt.user.text", b"{not msgpack")
        await bus.close()

    asyncio.run(poison())
    proc, _ = stack
    proc.wait_for("terminated undecodable message")
    streams = vagent("streams", "--nats", nats.url)
    assert "terminated" in streams.stdout and "undecodable" in streams.stdout
    assert max(map(len, streams.stdout.splitlines())) <= 100  # the reason cut to fit …
    wide = vagent("streams", "--wide", "--nats", nats.url).stdout
    assert "undecodable: " in wide and max(map(len, wide.splitlines())) > 100  # … whole with --wide
    assert vagent("say", "still there?", "-s", "s3", "--nats", nats.url).stdout == \
        "You said: still there?.\n"


def test_health_of_a_subset_of_actors(tmp_path: Path) -> None:
    """A box that runs some actors alone: health expects all of them unless told which."""
    server = EmbeddedServer(tmp_path / "nats", port=free_port())
    server.start()
    procs = [Proc(["projections", "serve", "--nats", server.url, "--data-dir", str(tmp_path / "data")]),
             Proc(["actor", "run", "tools", "--nats", server.url])]
    try:
        procs[0].wait_for("projections started")
        procs[1].wait_for("actor started")
        whole = vagent("health", "--json", "--nats", server.url)
        assert whole.returncode == 1 and "dialogue" in json.loads(whole.stdout)["missing"]
        subset = vagent("health", "--actors", "tools", "--nats", server.url)
        assert subset.returncode == 0, subset.stdout
        assert re.search(r"^tools\s+alive \(1 instance", subset.stdout, re.M), subset.stdout
        assert "dialogue" not in subset.stdout
        wrong = vagent("health", "--actors", "tools,nosuch", "--nats", server.url)
        assert wrong.returncode == 2 and "unknown actor(s): nosuch" in wrong.stderr
    finally:
        for proc in procs:
            proc.stop()
        server.stop()


def test_health_fails_when_nothing_runs(tmp_path: Path) -> None:
    report = vagent("health", "--nats", f"nats://127.0.0.1:{free_port()}")
    assert report.returncode == 1 and "DOWN" in report.stdout


def test_say_explains_an_unreachable_llm(tmp_path: Path) -> None:
    # A server of its own: the module's stack would otherwise share the dialogue's work.
    nats = EmbeddedServer(tmp_path / "nats", port=free_port())
    nats.start()
    proc = Proc(["actor", "run", "dialogue", "--nats", nats.url],
                OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    try:
        proc.wait_for("running")
        said = vagent("say", "anyone?", "-s", "nollm", "--nats", nats.url, "--timeout", "30")
    finally:
        proc.stop()
        nats.stop()
    assert said.returncode == 1
    assert "llm_unavailable" in said.stderr and "Connection error" in said.stderr


def test_embedded_nats_crash_is_survived(llm: OpenAIServer, tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = Proc(["up", "--port", str(port), "--data-dir", str(tmp_path), "--edge-port", str(free_port())],
                OPENAI_BASE_URL=llm.base_url)
    try:
        proc.wait_for("vagent is up")
        assert vagent("say", "before", "-s", "r1", "--nats", url).returncode == 0
        server_pid = int(next(p for p in os.listdir("/proc") if p.isdigit()
                              and _is_nats_on(int(p), port)))
        os.kill(server_pid, signal.SIGKILL)
        proc.wait_for("restarting")
        proc.wait_for("nats reconnected")
        after = vagent("say", "after", "-s", "r1", "--nats", url, "--timeout", "30")
        assert after.returncode == 0 and after.stdout == "You said: after.\n"
        logged = vagent("tail", "vagent.session.r1.evt.assistant.message", "--from-start",
                        "--json", "--limit", "2", "--nats", url)
        texts = [json.loads(line)["text"] for line in logged.stdout.splitlines()]
        assert texts == ["You said: before.", "You said: after."]
    finally:
        assert proc.stop() == 0


def _is_nats_on(pid: int, port: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return cmdline[0].endswith(b"nats-server") and str(port).encode() in cmdline


def test_version_names_vagent_and_the_bundled_server() -> None:
    out = vagent("version")
    assert out.returncode == 0
    assert out.stdout.startswith("vagent 0.1.0") and "nats-server: v2.15.1" in out.stdout


def test_bad_session_id_and_unknown_actor_are_refused_clearly() -> None:
    bad = vagent("say", "hi", "--session", "a.b", "--nats", "nats://127.0.0.1:1")
    assert bad.returncode == 2 and "invalid session id 'a.b'" in bad.stderr
    unknown = vagent("actor", "run", "nope")
    assert unknown.returncode == 2 and "unknown actor 'nope'" in unknown.stderr


def test_chat_streams_answers_shows_tools_and_starts_new_sessions(stack: tuple[Proc, Path],
                                                                 nats: EmbeddedServer,
                                                                 llm: OpenAIServer) -> None:
    llm.tool_arguments["calculator"] = json.dumps({"expression": "2+3"})
    chat = vagent("chat", "--nats", nats.url,
                  stdin="hello there\nuse calculator please\n/new\nfresh start\n/quit\n")
    assert chat.returncode == 0, chat.stderr
    out = chat.stdout
    assert "assistant> You said: hello there." in out
    assert '[tool calculator({"expression": "2+3"})]' in out
    assert "[result calculator: 2+3 = 5]" in out and "The tool said: 2+3 = 5." in out
    sessions = re.findall(r"new session (\S+)", out)
    assert len(sessions) == 1
    # The new session's log holds only what was said after /new.
    logged = vagent("tail", f"vagent.session.{sessions[0]}.evt.user.text", "--from-start",
                    "--json", "--limit", "1", "--nats", nats.url)
    assert json.loads(logged.stdout)["text"] == "fresh start"


def api_walkthrough() -> str:
    """The shell block of docs/api.md that goes from nothing to a bound device."""
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    walkthrough = [b for b in blocks if "/auth/register" in b]
    assert len(walkthrough) == 1, "docs/api.md holds one curl walkthrough"
    return walkthrough[0]


def test_the_documented_api_walkthrough_runs_against_vagent_up(stack: tuple[Proc, Path]) -> None:
    """docs/api.md's curl block, run as written by bash with the real curl and jq, against the
    address `vagent up` printed: register, log in, create an assistant, bind a device."""
    proc, _ = stack
    api = re.search(r"API\s+(http://\S+/api/v1)/", proc.output())
    assert api, proc.output()
    script = api_walkthrough()
    documented = "API=http://127.0.0.1:8000/api/v1\n"
    assert script.startswith(documented)
    # Each answer on its own line, and an HTTP error stops the script (set -e) with its body.
    prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body -w "\\n" "$@"; }\n'
    run = subprocess.run(["bash", "-c", prelude + script.replace(documented, f"API={api.group(1)}\n")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    answers = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    user, me, listed, patched, turned, bound, collected, devices, refreshed = answers
    assert user["email"] == "ada@example.com" and me["display_name"] == "Ada"
    assert sorted(a["name"] for a in listed["items"]) == ["Assistant", "Kitchen"]
    assert patched["name"] == "Kitchen" and patched["greeting"] == "Hello!"
    assert turned["turn"] == {"barge_in_min_ms": 600, "echo": "on"} and turned["greeting"] == "Hello!"
    assert bound["device"]["device_id"] == "aa:bb:cc:dd:ee:ff"
    assert (collected["status"], collected["token"], collected["assistant_id"]) == (
        "bound", bound["token"], patched["assistant_id"])
    assert [d["device_id"] for d in devices["items"]] == ["aa:bb:cc:dd:ee:ff"]
    assert refreshed["access_token"] and refreshed["refresh_token"]
    with httpx.Client(base_url=api.group(1), timeout=30) as http:
        # The script's login and its refreshed pair are revoked: it logged out.
        assert http.get("/me", headers={"Authorization": f"Bearer {refreshed['access_token']}"}
                        ).status_code == 401
        login = http.post("/auth/login", json={"email": "ada@example.com", "password": "correct horse 9"})
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert http.get("/devices", headers=auth).json()["items"] == []  # the script unbound it
        kitchen = [a for a in http.get("/assistants", headers=auth).json()["items"] if a["name"] == "Kitchen"]
        assert kitchen[0]["tools"] == ["get_time", "calculator"]


def test_vagent_edge_serves_the_api_on_its_own(stack: tuple[Proc, Path], nats: EmbeddedServer) -> None:
    """A second edge process beside `vagent up`'s: same accounts, same read models."""
    _, data = stack
    port = free_port()
    edge = Proc(["edge", "--nats", nats.url, "--data-dir", str(data), "--port", str(port)])
    try:
        edge.wait_for("vagent edge:")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30) as http:
            assert http.get("/openapi.json").json()["openapi"] == "3.1.0"
            account = {"email": "grace@example.com", "password": "correct horse 9"}
            r = http.post("/auth/register", json=account)
            assert r.status_code == 201, r.text
            r = http.post("/auth/login", json=account)
            assert r.status_code == 200, r.text
    finally:
        assert edge.stop() == 0


async def test_a_xiaozhi_device_talks_to_vagent_up(stack: tuple[Proc, Path]) -> None:
    """A device at the xiaozhi socket vagent up prints: a typed turn, spoken back."""
    proc, _ = stack
    url = re.search(r"(ws://\S+/xiaozhi/v1/)  \(its WebSocket\)", proc.output())
    assert url, proc.output()
    async with XiaozhiDevice(url.group(1), version=1, device_id="AA:BB:CC:00:11:22") as device:
        await device.hello()
        await device.listen("detect", text="good evening")
        assert (await device.wait_json("stt")).message["text"] == "good evening"
        await device.wait_json("tts", state="stop", timeout=60)
        assert device.audio()  # Opus frames came between tts start and stop
        spoken = [m["text"] for m in device.messages("tts") if m["state"] == "sentence_start"]
        assert " ".join(spoken) == "You said: good evening."
