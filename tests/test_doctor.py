"""`vagent doctor` on this machine: the real command in a subprocess, real sockets, a real
`vagent up`. Nothing asserts that the whole machine passes: CI may lack something optional."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.dialogue.local_llm import get_model
from bus.server import EmbeddedServer, free_port
from cli import doctor
from cli.doctor import Status
from settings.config import Config
from settings.paths import data_dir
from tests.procs import Proc, vagent

CHECK_NAMES = ["python", "uv", "settings", "data dir", "nats-server", "NATS port", "edge port",
               "local model", "LLM runtime", "chromium"]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port taken the ordinary way: a socket of this very process listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def line_of(output: str, name: str) -> str:
    """The check's line: status, then the name in its column."""
    return next(line for line in output.splitlines() if line[6:].startswith(name + " "))


@pytest.mark.parametrize("flag", ["--nats-port", "--edge-port"])  # --port: the tests below
def test_a_taken_port_fails_and_is_named_with_its_holder(listener: socket.socket, tmp_path: Path,
                                                         flag: str) -> None:
    port = listener.getsockname()[1]
    other = "--edge-port" if flag != "--edge-port" else "--port"
    out = vagent("doctor", flag, str(port), other, str(free_port()), "--data-dir", str(tmp_path))
    assert out.returncode == 1, out.stdout
    line = line_of(out.stdout, "edge port" if flag == "--edge-port" else "NATS port")
    assert line.startswith("FAIL")
    assert f"127.0.0.1:{port} is taken" in line
    assert f"held by pid {os.getpid()} " in line  # found through /proc/net/tcp and /proc/*/fd
    assert "fix: stop that process, or give vagent another port" in out.stdout


def test_free_ports_and_a_temp_data_dir_show_every_check(tmp_path: Path) -> None:
    nats_port, edge_port = free_port(), free_port()
    out = vagent("doctor", "--port", str(nats_port), "--edge-port", str(edge_port),
                 "--data-dir", str(tmp_path))
    for name in CHECK_NAMES:
        assert line_of(out.stdout, name).split()[0] in {"ok", "warn", "FAIL"}
    assert line_of(out.stdout, "NATS port").startswith(f"ok    NATS port    127.0.0.1:{nats_port} is free")
    assert line_of(out.stdout, "edge port").startswith("ok")
    assert line_of(out.stdout, "data dir").startswith(f"ok    data dir     {tmp_path} (writable")
    assert line_of(out.stdout, "python").startswith("ok")  # this very interpreter runs it
    # Nothing was assembled or created: doctor only looks.
    assert list(tmp_path.iterdir()) == []
    # The exit code follows the lines, whatever this machine lacks.
    assert out.returncode == (1 if any(line.startswith("FAIL") for line in out.stdout.splitlines()) else 0)


def test_json_holds_the_same_checks(tmp_path: Path) -> None:
    out = vagent("doctor", "--json", "--port", str(free_port()), "--edge-port", str(free_port()),
                 "--data-dir", str(tmp_path))
    report = json.loads(out.stdout)
    assert [check["name"] for check in report["checks"]] == CHECK_NAMES
    assert report["ok"] == (out.returncode == 0)
    assert all(check["fix"] for check in report["checks"] if check["status"] != "ok")


def test_a_data_dir_under_a_regular_file_fails_with_a_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = vagent("doctor", "--port", str(free_port()), "--edge-port", str(free_port()),
                 "--data-dir", str(blocker / "data"))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    at = lines.index(line_of(out.stdout, "data dir"))
    assert lines[at].startswith("FAIL")
    assert f"{blocker} is a file, not a directory" in lines[at]
    assert lines[at + 1].strip().startswith("fix: give --data-dir")
    # The fix sits under the detail column, not under the status.
    assert lines[at + 1].index("fix:") == lines[at].index(str(blocker / "data"))


def test_a_data_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    check = doctor.check_data_dir(blocker)
    assert check.status is Status.FAIL and "is not a directory" in check.detail and check.fix


def test_the_data_dir_is_the_option_then_the_environment_then_dot_vagent_and_doctor_creates_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VAGENT_DATA_DIR", raising=False)
    assert data_dir(create=False) == tmp_path / ".vagent" and not (tmp_path / ".vagent").exists()
    monkeypatch.setenv("VAGENT_DATA_DIR", "from-env")
    assert data_dir(create=False) == tmp_path / "from-env"
    assert data_dir("given", create=False) == tmp_path / "given"
    out = vagent("doctor", "--port", str(free_port()), "--edge-port", str(free_port()),
                 "--data-dir", str(tmp_path / "looked-at"))
    assert str(tmp_path / "looked-at") in line_of(out.stdout, "data dir")
    assert not (tmp_path / "looked-at").exists() and not (tmp_path / "from-env").exists()
    assert data_dir() == tmp_path / "from-env" and (tmp_path / "from-env").is_dir()


def test_a_running_vagent_is_told_apart_from_a_conflict(tmp_path: Path) -> None:
    nats_port, edge_port = free_port(), free_port()
    flags = ["--port", str(nats_port), "--edge-port", str(edge_port), "--data-dir", str(tmp_path)]
    # The tools actor alone: no dialogue, so no local model is needed to start.
    up = Proc(["up", *flags, "--actors", "tools"])
    try:
        up.wait_for("vagent is up")
        out = vagent("doctor", *flags, "--actors", "tools")
    finally:
        assert up.stop() == 0
    assert out.returncode == 1
    nats_line = line_of(out.stdout, "NATS port")
    assert nats_line.startswith("FAIL") and "vagent's embedded nats-server" in nats_line
    assert f"started by pid {up.proc.pid} " in nats_line
    edge_line = line_of(out.stdout, "edge port")
    assert edge_line.startswith("FAIL") and "vagent's edge already answers" in edge_line
    assert out.stdout.count("fix: vagent is already running here; use it") == 2
    assert "is taken" not in out.stdout
    assert "not needed now (no dialogue actor)" in line_of(out.stdout, "local model")


def test_someone_elses_nats_is_named_and_offered_to_vagent(nats_server: EmbeddedServer) -> None:
    check = doctor.check_nats_port(nats_server.port)
    assert check.status is Status.FAIL
    assert "a NATS server (v" in check.detail and f"held by pid {nats_server.proc.pid} " in check.detail
    assert f"--nats nats://127.0.0.1:{nats_server.port}" in check.fix


def test_an_external_nats_must_answer(nats_server: EmbeddedServer) -> None:
    good = doctor.check_external_nats(f"nats://user:secret@127.0.0.1:{nats_server.port}")
    assert good.status is Status.OK and "with JetStream" in good.detail
    assert "secret" not in good.detail
    bad = doctor.check_external_nats(f"nats://127.0.0.1:{free_port()}")
    assert bad.status is Status.FAIL and "does not answer as NATS" in bad.detail


def test_what_only_developers_need_fails_only_with_dev() -> None:
    assert doctor.check_uv(None).status is Status.WARN
    assert doctor.check_uv(None, dev=True).status is Status.FAIL
    assert "pip install uv" in doctor.check_uv(None).fix
    assert doctor.check_chromium(None).status is Status.WARN
    assert doctor.check_chromium(None, dev=True).status is Status.FAIL


def test_an_old_python_fails() -> None:
    check = doctor.check_python((3, 10, 14))
    assert check.status is Status.FAIL and "3.10.14" in check.detail and "3.11" in check.fix
    assert doctor.check_python((3, 12, 1)).status is Status.OK


def test_an_assembled_model_that_does_not_match_its_pin_is_reported(tmp_path: Path) -> None:
    model = get_model("smollm2-135m")
    target = tmp_path / "models" / f"{model.served_name}.gguf"
    target.parent.mkdir()
    target.write_bytes(b"not a gguf")
    check = doctor.check_local_model("smollm2-135m", tmp_path)
    # vagent up rebuilds such a file by itself, so it does not block the start.
    assert check.status is Status.WARN and "does not match its pin" in check.detail
    unknown = doctor.check_local_model("no-such-model", tmp_path)
    assert unknown.status is Status.FAIL and "unknown local model" in unknown.detail
    assert doctor.check_local_model("no-such-model", tmp_path, unused="no dialogue actor"
                                    ).status is Status.WARN


def test_cpu_features_keep_what_the_cpu_has() -> None:
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | LLAMAFILE = 1 | \n"
    assert doctor.cpu_features(info) == "CPU: SSE3 AVX LLAMAFILE"


@pytest.mark.parametrize("env", [
    {}, {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}, {"VAGENT_LOCAL_LLM_URL": "http://x/v1"},
    {"VAGENT_LLM_BASE_URL": "http://x/v1"},
])
@pytest.mark.parametrize("actors", [["dialogue", "tools"], ["tools"]])
def test_doctor_decides_on_the_local_model_as_vagent_up_does(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], actors: list[str]) -> None:
    from cli.up import wants_local_llm
    from settings.llm import LOCAL_LLM_OVERRIDES

    for name in LOCAL_LLM_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = Config()
    expected = "dialogue" in actors and not env
    assert doctor.wants_local_llm(config, actors) == wants_local_llm(config, actors) == expected
    assert (doctor._local_llm_unused(config, actors, config_ok=True) is None) == expected
