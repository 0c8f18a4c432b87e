"""Finding the running stack: `vagent up` records where it runs, and the other commands,
run from anywhere without flags, talk to it (hosting.stack); a command with nothing to talk
to fails at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from bus.client import Bus
from bus.errors import BusError, Unreachable
from bus.server import EmbeddedServer, free_port
from devservers.echo_llm import OpenAIServer
from hosting import stack
from tests.procs import Proc, vagent

HINT = "start the stack with `vagent up` (or pass --nats)"


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own pointer directory (XDG_STATE_HOME), here and in its subprocesses."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


def write(path: Path, record: stack.Stack) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(record))


def test_a_record_counts_while_its_process_lives(state: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAGENT_NATS_URL", raising=False)
    monkeypatch.delenv("VAGENT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    mine = stack.record(nats_url="nats://127.0.0.1:4999", data_dir=data, edge_url="http://127.0.0.1:8999")
    assert json.loads((data / "stack.json").read_text())["pid"] == os.getpid()
    assert json.loads((state / "vagent" / "stack.json").read_text()) == {"record": str(data / "stack.json")}
    found = stack.locate()
    assert (found.nats_url, found.data_dir, found.stack) == ("nats://127.0.0.1:4999", data, mine)
    assert found.announce == f"vagent: using the stack at http://127.0.0.1:8999 (data {data})"
    # A NATS URL given names another stack than the recorded one: the record does not count.
    assert stack.locate("nats://127.0.0.1:5000").stack is None
    assert stack.locate(data_dir=data).stack == mine
    assert stack.locate(mine.nats_url, data).announce is None  # the flags named it already

    # Another process's live record (`vagent projections serve`) that this one (an edge)
    # joined: a stop takes back only the address it added.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = msgspec.structs.replace(mine, pid=other.pid)
        (data / "stack.json").write_bytes(msgspec.json.encode(theirs))
        stack.forget(mine)
        assert stack.read(data / "stack.json") == msgspec.structs.replace(theirs, edge_url=None)
    finally:
        other.kill()
        other.wait()
    assert stack.read(data / "stack.json") is None  # its process is gone
    (data / "stack.json").write_bytes(msgspec.json.encode(mine))

    stack.forget(mine)
    assert not (data / "stack.json").exists() and not (state / "vagent" / "stack.json").exists()
    assert stack.locate().stack is None


def test_a_crashed_stacks_record_is_ignored(state: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAGENT_NATS_URL", raising=False)
    monkeypatch.delenv("VAGENT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "crashed"
    closed = f"nats://127.0.0.1:{free_port()}"
    write(data / "stack.json", stack.Stack(nats_url=closed, data_dir=str(data), pid=dead_pid(),
                                           started="2026-01-01T00:00:00Z"))
    (state / "vagent").mkdir(parents=True)
    (state / "vagent" / "stack.json").write_text(json.dumps({"record": str(data / "stack.json")}))
    found = stack.locate()
    assert found.stack is None and found.nats_url == "nats://127.0.0.1:4222"
    assert found.data_dir == tmp_path / ".vagent" and found.announce is None
    assert stack.locate(data_dir=data).stack is None
    # Its pid given to a process started since: not the stack's process either.
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write(data / "stack.json", stack.Stack(nats_url=closed, data_dir=str(data), pid=later.pid,
                                               started="2026-01-01T00:00:00Z"))
        assert stack.locate().stack is None
        write(data / "stack.json", stack.Stack(nats_url=closed, data_dir=str(data), pid=later.pid,
                                               started=time.strftime(stack.TIME_FORMAT, time.gmtime())))
        assert stack.locate().nats_url == closed  # the same process: its record counts
    finally:
        later.kill()
        later.wait()
    assert stack.locate().stack is None  # and once it ended, it does not
    # The command says nothing of that stack, and fails at once on the closed port it names.
    said = vagent("say", "hi", "-s", "s1", "--nats", closed, cwd=tmp_path)
    assert said.returncode == 1
    assert "using the stack" not in said.stderr
    assert f"cannot reach NATS at {closed}: connection refused — {HINT}" in said.stderr
    assert not (tmp_path / ".vagent").exists()


async def test_a_refused_connection_fails_at_once_and_a_silent_server_times_out() -> None:
    closed = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(Unreachable, match="connection refused"):
        await Bus.connect(closed, timeout=30)
    assert time.monotonic() - started < 10  # not the 30 s timeout: nats-py would retry until then
    with socket.socket() as silent:  # accepts connections, never speaks NATS
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(BusError) as raised:
            await Bus.connect(url, timeout=0.5)
        assert not isinstance(raised.value, Unreachable)


@pytest.fixture
def up(state: Path, tmp_path: Path, llm: OpenAIServer) -> Iterator[tuple[Proc, Path, int, int]]:
    data, port, edge_port = tmp_path / "my data", free_port(), free_port()
    proc = Proc(["up", "--data-dir", str(data), "--port", str(port), "--edge-port", str(edge_port),
                 "--actors", "dialogue,tools,indexer"], OPENAI_BASE_URL=llm.base_url,
                XDG_STATE_HOME=str(state))
    try:
        proc.wait_for("vagent is up")
        yield proc, data, port, edge_port
    finally:
        assert proc.stop() == 0, proc.output()


def test_commands_run_anywhere_find_the_stack_vagent_up_started(
        up: tuple[Proc, Path, int, int], state: Path, tmp_path: Path, llm: OpenAIServer) -> None:
    proc, data, port, edge_port = up
    record = json.loads((data / "stack.json").read_text())
    assert record["nats_url"] == f"nats://127.0.0.1:{port}" and record["data_dir"] == str(data)
    assert record["edge_url"] == f"http://127.0.0.1:{edge_port}" and record["llm_url"] is None
    assert record["pid"] == proc.proc.pid
    assert "vagent say \"hello\" --session s1" in proc.output() and "--nats" not in proc.output()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    using = f"vagent: using the stack at http://127.0.0.1:{edge_port} (data {data})"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = vagent(*args, cwd=elsewhere, timeout=120, XDG_STATE_HOME=str(state))
        assert done.returncode == 0, f"vagent {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        assert using in done.stderr.splitlines()
        return done

    assert cli("say", "hello", "-s", "s1").stdout == "You said: hello.\n"
    assert "s1" in [s["session_id"] for s in json.loads(cli("sessions", "--json").stdout)]
    manual = elsewhere / "kettle.txt"
    manual.write_text("Kettle K9 care.\n\nDescale the kettle monthly with citric acid.\n")
    assert cli("docs", "add", str(manual)).stdout.splitlines()[-1] == "1 of 1 document indexed for the system"
    assert [d["filename"] for d in json.loads(cli("docs", "list", "--json").stdout)] == ["kettle.txt"]
    hits = json.loads(cli("docs", "search", "descale", "--json").stdout)
    assert hits and "citric acid" in hits[0]["text"]

    # A replay answers with the model the stack's dialogue uses: here a local one it records.
    other = tmp_path / "with local llm"
    mine = stack.record(nats_url=record["nats_url"], data_dir=other, llm_url=llm.base_url)
    try:
        replayed = vagent("replay", "s1", "--no-tts", "--json", cwd=elsewhere, timeout=180,
                          XDG_STATE_HOME=str(state))
    finally:
        stack.forget(mine)
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["llm"] == f"local local at {llm.base_url}"
    assert report["turns"][0]["replay"]["answer"] == "You said: hello."
    assert not (elsewhere / ".vagent").exists()

    assert proc.stop() == 0, proc.output()
    assert not (data / "stack.json").exists() and not (state / "vagent" / "stack.json").exists()


def test_the_stack_in_the_given_data_dir_is_found(state: Path, tmp_path: Path) -> None:
    """`vagent projections serve` records itself too; --data-dir finds it without --nats."""
    server = EmbeddedServer(tmp_path / "nats", port=free_port())
    server.start()
    data = tmp_path / "data"
    try:
        proc = Proc(["projections", "serve", "--nats", server.url, "--data-dir", str(data)],
                    XDG_STATE_HOME=str(state))
        try:
            proc.wait_for("vagent projections: serving")
            assert json.loads((data / "stack.json").read_text())["nats_url"] == server.url
            listed = vagent("users", "list", "--json", "--data-dir", str(data), cwd=tmp_path,
                            XDG_STATE_HOME=str(state))
            assert listed.returncode == 0, listed.stderr
            assert json.loads(listed.stdout) == []
            assert f"vagent: using the stack at {server.url} (data {data})" in listed.stderr
        finally:
            assert proc.stop() == 0, proc.output()
        assert not (data / "stack.json").exists()
    finally:
        server.stop()


def test_looking_creates_no_files_where_no_stack_is(state: Path, tmp_path: Path,
                                                    nats_server: EmbeddedServer) -> None:
    """No stack recorded: the commands read the defaults (./.vagent) but create nothing there,
    neither the data directory nor a signing key."""
    looked = vagent("users", "lock", "nobody@example.com", "--nats", nats_server.url, cwd=tmp_path)
    assert looked.returncode == 1 and "nobody@example.com" in looked.stderr
    listed = vagent("sessions", "--nats", nats_server.url, cwd=tmp_path)
    store = tmp_path / ".vagent" / "read.duckdb"
    assert listed.returncode == 1 and f"no read store at {store}" in listed.stderr
    assert not (tmp_path / ".vagent").exists()
