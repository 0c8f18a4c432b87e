"""`vagent users`, `vagent assistants`, `vagent devices`: the real command in subprocesses,
over a real NATS, with `vagent projections serve` keeping the read models."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bus.client import Bus
from bus.server import EmbeddedServer, free_port
from cli.assistant_options import GROUPS, group_option, option
from domain.errors import Locked, Unauthorized
from edge.services import Services
from schemas import AssistantSettings, new_id
from tests.api_harness import api_config
from tests.procs import projections_serving, vagent

PASSWORD = "correct horse 9"
SETTINGS = msgspec.structs.fields(AssistantSettings)


@pytest.fixture(scope="module")
def stack(module_nats: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[EmbeddedServer, Path]]:
    data = tmp_path_factory.mktemp("data")
    with projections_serving(module_nats.url, data):
        yield module_nats, data


@pytest.fixture
async def services(stack: tuple[EmbeddedServer, Path]) -> AsyncIterator[Services]:
    nats, data = stack
    bus = await Bus.connect(nats.url, name="test-cli-accounts")
    yield Services(bus, api_config(), data)
    await bus.close()


def cli(stack: tuple[EmbeddedServer, Path], *args: str, stdin: str | None = None,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    nats, data = stack
    done = vagent(*args, "--nats", nats.url, "--data-dir", str(data), stdin=stdin)
    if ok:
        assert done.returncode == 0, f"vagent {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def cli_json(stack: tuple[EmbeddedServer, Path], *args: str, stdin: str | None = None) -> Any:
    return json.loads(cli(stack, *args, "--json", stdin=stdin).stdout)


def refused(stack: tuple[EmbeddedServer, Path], *args: str, stdin: str | None = None) -> str:
    """The error a refused command printed (exit 1, nothing on stdout, no traceback)."""
    done = cli(stack, *args, stdin=stdin, ok=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr.strip()


def email() -> str:
    return f"cli{new_id().lower()}@example.com"


def create_user(stack: tuple[EmbeddedServer, Path], address: str) -> dict[str, Any]:
    return cli_json(stack, "users", "create", address, "--password-stdin", stdin=PASSWORD + "\n")


def line_of(output: str, text: str) -> str:
    lines = [line for line in output.splitlines() if text in line]
    assert len(lines) == 1, output
    return lines[0]


# --- users ------------------------------------------------------------------------------------


async def test_users_create_list_lock_unlock(stack: tuple[EmbeddedServer, Path], services: Services) -> None:
    ada, bob = email(), email()
    created = cli(stack, "users", "create", ada, "--password", PASSWORD, "--name", "Ada")
    assert created.stdout.startswith(f"created user {ada} (")
    bob_user = create_user(stack, bob)
    assert bob_user["email"] == bob and bob_user["locked"] is False and bob_user["default_assistant_id"]

    listed = cli(stack, "users", "list", "--wide").stdout
    header = listed.splitlines()[0].split()
    assert header[:3] == ["user", "email", "name"] and set(listed.splitlines()[1]) <= {"-", " "}
    ada_line = line_of(listed, ada)
    assert "Ada" in ada_line and " no " in ada_line
    # The default assistant by its name (beside its id with --wide) …
    assert f"Assistant ({bob_user['default_assistant_id']})" in line_of(listed, bob)
    # … and without --wide, every line within 100 columns.
    narrow = cli(stack, "users", "list").stdout
    assert max(map(len, narrow.splitlines())) <= 100 and bob_user["user_id"] not in narrow
    users = {u["email"]: u for u in cli_json(stack, "users", "list")}
    assert users[bob]["user_id"] == bob_user["user_id"]
    assert users[ada]["display_name"] == "Ada" and users[ada]["locked"] is False
    ada_id = users[ada]["user_id"]

    # The account works as if registered through the API.
    tokens = await services.accounts.login(ada, PASSWORD)
    assert (await services.tokens.verify(tokens.access_token)).user_id == ada_id

    locked = cli(stack, "users", "lock", ada, "--minutes", "30").stdout
    assert locked.startswith(f"locked {ada} ({ada_id}) until ")
    with pytest.raises(Locked):
        await services.accounts.login(ada, PASSWORD)
    with pytest.raises(Unauthorized):  # tokens issued before the lock are revoked
        await services.tokens.verify(tokens.access_token)
    row = {u["email"]: u for u in cli_json(stack, "users", "list")}[ada]
    assert row["locked"] is True and row["lock_reason"] == "admin" and row["locked_until"]
    assert "until " in line_of(cli(stack, "users", "list", "--wide").stdout, ada)

    unlocked = cli(stack, "users", "unlock", ada_id).stdout  # by id this time
    assert unlocked.strip() == f"unlocked {ada} ({ada_id})"
    assert {u["email"]: u for u in cli_json(stack, "users", "list")}[ada]["locked"] is False
    await services.accounts.login(ada, PASSWORD)

    forever = cli_json(stack, "users", "lock", bob_user["user_id"])
    assert forever["locked"] is True and forever["locked_until"] is None
    assert "yes (admin)" in line_of(cli(stack, "users", "list", "--wide").stdout, bob)
    assert "until unlocked" in cli(stack, "users", "lock", bob).stdout  # again: still locked
    assert cli_json(stack, "users", "unlock", bob)["locked"] is False


def test_users_create_password_from_stdin_and_prompt(stack: tuple[EmbeddedServer, Path]) -> None:
    address = email()
    created = create_user(stack, address)
    assert created["email"] == address
    prompted = email()
    done = cli(stack, "users", "create", prompted, stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert f"created user {prompted}" in done.stdout
    mismatch = cli(stack, "users", "create", email(), stdin=f"{PASSWORD}\nsomething else\n", ok=False)
    assert mismatch.returncode != 0
    both = cli(stack, "users", "create", email(), "--password", PASSWORD, "--password-stdin",
               stdin=PASSWORD, ok=False)
    assert both.returncode == 2 and "not both" in both.stderr


def test_users_refusals(stack: tuple[EmbeddedServer, Path]) -> None:
    taken = email()
    create_user(stack, taken)
    assert "an account with this email exists" in refused(
        stack, "users", "create", taken.upper().replace("@EXAMPLE.COM", "@example.com"),
        "--password-stdin", stdin=PASSWORD)
    assert "not an email address" in refused(stack, "users", "create", "nobody", "--password", PASSWORD)
    weak = refused(stack, "users", "create", email(), "--password", "short")
    assert "password" in weak.lower()
    ghost = email()
    for command in (("users", "lock", ghost), ("users", "unlock", ghost),
                    ("assistants", "list", "--user", ghost), ("devices", "list", "--user", ghost)):
        assert ghost in refused(stack, *command)
    assert "no user '01NOSUCHUSER'" in refused(stack, "users", "lock", "01NOSUCHUSER")


# --- assistants -------------------------------------------------------------------------------


def test_assistants_create_and_list(stack: tuple[EmbeddedServer, Path]) -> None:
    owner, other = email(), email()
    user = create_user(stack, owner)
    create_user(stack, other)
    created = cli(stack, "assistants", "create", "--user", owner, "--name", "Bob",
                  "--persona", "You are Bob.", "--greeting", "Hi, I am Bob").stdout
    assert created.startswith("created assistant ") and f"'Bob') for {owner}" in created
    bob_id = created.split()[2]
    full = cli_json(stack, "assistants", "create", "--user", user["user_id"], "--name", "Tooly",
                    "--persona", "p", "--tool", "calculator", "--tool", "get_time", "--tts", "piper")
    assert full["owner_id"] == user["user_id"] and full["tools"] == ["calculator", "get_time"]
    assert full["tts"] == "piper" and full["greeting"] is None

    mine = {a["assistant_id"]: a for a in cli_json(stack, "assistants", "list", "--user", owner)}
    assert set(mine) == {bob_id, full["assistant_id"], user["default_assistant_id"]}
    assert mine[bob_id]["name"] == "Bob" and mine[bob_id]["persona"] == "You are Bob."
    assert mine[bob_id]["greeting"] == "Hi, I am Bob" and mine[bob_id]["owner_id"] == user["user_id"]
    assert mine[full["assistant_id"]]["tools"] == ["calculator", "get_time"]

    narrow = cli(stack, "assistants", "list", "--user", owner).stdout
    assert max(map(len, narrow.splitlines())) <= 100 and "ids shortened" in narrow
    table = cli(stack, "assistants", "list", "--user", owner, "--wide").stdout
    assert table.splitlines()[0].split()[:3] == ["assistant", "owner", "name"]
    assert owner in line_of(table, bob_id) and "Bob" in line_of(table, bob_id)
    assert "calculator,get_time" in line_of(table, full["assistant_id"])
    assert bob_id not in cli(stack, "assistants", "list", "--user", other).stdout

    everything = {a["assistant_id"]: a for a in cli_json(stack, "assistants", "list")}
    assert set(mine) <= set(everything)
    assert any(a["owner_id"] != user["user_id"] for a in everything.values())
    assert owner in line_of(cli(stack, "assistants", "list", "--wide").stdout, bob_id)  # owners by email


def test_every_assistant_setting_is_an_option(stack: tuple[EmbeddedServer, Path], tmp_path: Path) -> None:
    """Each setting AssistantSettings declares is listed by --help and reaches the assistant:
    a setting added there fails here until it has a value below (and the CLI reaches it)."""
    owner = email()
    create_user(stack, owner)
    manual = tmp_path / "manual.txt"
    manual.write_text("The kettle boils in two minutes.")
    added = cli_json(stack, "docs", "add", str(manual), "--user", owner, "--no-wait")
    values: dict[str, Any] = {
        "name": "Every", "persona": "You know everything.", "greeting": "Ask me", "voice": "en_US-amy",
        "llm": "local", "asr": "moonshine", "tts": "piper", "tools": ["calculator", "get_time"],
        "documents": [added[0]["document_id"]], "language": "zh",
        "turn": {"detector": "silence", "complete_hold_ms": 250, "incomplete_max_ms": 2500,
                 "threshold": 0.6, "barge_in_min_ms": 500, "false_interruption_timeout_ms": 1500,
                 "backchannels": ["mhm", "uh huh", "嗯"], "echo": "on"},
    }
    assert set(values) == {s.name for s in SETTINGS}, "give the new setting a value here"
    assert all(values[s.name] != s.default for s in SETTINGS if s.default is not msgspec.NODEFAULT)
    for group, kind in GROUPS.items():
        assert set(values[group]) == set(kind.__struct_fields__), f"give each {group} setting a value"

    listing = vagent("assistants", "create", "--help", COLUMNS="200")
    assert listing.returncode == 0, listing.stderr
    options = [(s.name, None, option(s)) for s in SETTINGS if s.name not in GROUPS]
    options += [(group, field, group_option(group, field)) for group, kind in GROUPS.items()
                for field in kind.__struct_fields__]
    for _, _, flag in options:
        assert f" {flag} " in listing.stdout, (flag, listing.stdout)

    args: list[str] = []
    for name, field, flag in options:
        value = values[name] if field is None else values[name][field]
        if field is not None and isinstance(value, list):  # a group's list: comma-separated
            value = [",".join(value)]
        for item in value if isinstance(value, list) else [value]:
            args += [flag, str(item)]
    created = cli_json(stack, "assistants", "create", "--user", owner, *args)
    stored = {a["assistant_id"]: a for a in cli_json(stack, "assistants", "list", "--user", owner)}
    for setting in SETTINGS:
        assert created[setting.name] == values[setting.name], setting.name
        assert stored[created["assistant_id"]][setting.name] == values[setting.name], setting.name


def test_assistants_create_refusals(stack: tuple[EmbeddedServer, Path]) -> None:
    owner = email()
    create_user(stack, owner)
    base = ("assistants", "create", "--user", owner, "--name", "X", "--persona", "p")
    assert "no llm provider named 'nope'" in refused(stack, *base, "--llm", "nope")
    assert "no tts provider named 'nope' (known: " in refused(stack, *base, "--tts", "nope")
    assert "no tool named 'launch'" in refused(stack, *base, "--tool", "launch")
    assert "no document '01NOSUCHDOC'" in refused(stack, *base, "--document", "01NOSUCHDOC")
    # The API body's limits, named by the option that broke them.
    assert refused(stack, "assistants", "create", "--user", owner, "--name", "") == (
        "error: invalid assistant: --name: Expected `str` of length >= 1")
    assert refused(stack, *base, "--tool", "calculator", "--tool", "") == (
        "error: invalid assistant: --tool (value 2): Expected `str` of length >= 1")
    assert "--greeting: Expected `str` of length <= 500" in refused(stack, *base, "--greeting", "a" * 501)
    unknown = cli(stack, *base, "--colour", "blue", ok=False)
    assert unknown.returncode == 2 and "No such option" in unknown.stderr
    assert "no user" in refused(stack, "assistants", "create", "--user", "01NOSUCHUSER", "--name", "X",
                                "--persona", "p")
    assert len(cli_json(stack, "assistants", "list", "--user", owner)) == 1  # the default only


def test_assistants_turn_settings_update_and_show(stack: tuple[EmbeddedServer, Path]) -> None:
    owner = email()
    create_user(stack, owner)
    created = cli_json(stack, "assistants", "create", "--user", owner, "--name", "Speaker",
                       "--turn-preset", "speaker", "--complete-hold-ms", "250",
                       "--backchannels", "mhm, ok,嗯")
    aid = created["assistant_id"]
    assert created["turn"] == {"complete_hold_ms": 250, "barge_in_min_ms": 600,
                               "backchannels": ["mhm", "ok", "嗯"], "echo": "on"}

    shown = cli_json(stack, "assistants", "show", aid)
    assert shown["turn"] == created["turn"] and shown["name"] == "Speaker"
    # In force: its own settings over the configuration's ([asr.turn] and [asr] barge_in_min_ms).
    assert shown["turn_in_force"] == {
        "detector": "smart_turn", "complete_hold_ms": 250, "incomplete_max_ms": 2000, "threshold": 0.5,
        "barge_in_min_ms": 600, "false_interruption_timeout_ms": 2000,
        "backchannels": ["mhm", "ok", "嗯"], "echo": "on"}
    text = cli(stack, "assistants", "show", aid).stdout
    assert re.search(r"complete_hold_ms\s+250\s+\(set here\)", text), text
    assert re.search(r"incomplete_max_ms\s+2000\s+\(configuration\)", text), text
    assert re.search(r"echo\s+on\s+\(set here\)", text), text

    # An update changes the turn settings given; `default` sets one back to the configuration's.
    updated = cli_json(stack, "assistants", "update", aid, "--turn-threshold", "0.7", "--echo", "default")
    assert updated["turn"] == {"complete_hold_ms": 250, "threshold": 0.7, "barge_in_min_ms": 600,
                               "backchannels": ["mhm", "ok", "嗯"]}
    assert updated["turn_in_force"]["echo"] == "auto"
    done = cli(stack, "assistants", "update", aid, "--name", "Quiet", "--turn-preset", "quiet")
    assert done.stdout.startswith(f"updated assistant {aid}")
    quiet = cli_json(stack, "assistants", "show", aid)
    assert (quiet["name"], quiet["turn"]) == ("Quiet", {})
    assert cli_json(stack, "assistants", "list", "--user", owner)[0]["turn"] in ({}, None)


def test_bad_turn_settings_are_refused_by_their_option(stack: tuple[EmbeddedServer, Path]) -> None:
    owner = email()
    create_user(stack, owner)
    base = ("assistants", "create", "--user", owner, "--name", "X")
    assert refused(stack, *base, "--complete-hold-ms", "-1") == (
        "error: invalid assistant: --complete-hold-ms: Expected `int` >= 0")
    assert refused(stack, *base, "--turn-threshold", "1.5") == (
        "error: invalid assistant: --turn-threshold: Expected `float` <= 1.0")
    assert refused(stack, *base, "--turn-detector", "vibes") == (
        "error: invalid assistant: --turn-detector: Invalid enum value 'vibes' (one of: silence, smart_turn)")
    assert "--incomplete-max-ms: Expected `int | null`, got `str`" in refused(
        stack, *base, "--incomplete-max-ms", "soon")
    assert "--backchannels (value 2): Expected `str` of length <= 32" in refused(
        stack, *base, "--backchannels", "ok," + "m" * 33)
    aid = cli_json(stack, *base)["assistant_id"]
    echo = refused(stack, "assistants", "update", aid, "--echo", "loud")
    assert "--echo: Invalid enum value 'loud' (one of: auto, off, on)" in echo
    assert "nothing to change" in refused(stack, "assistants", "update", aid)
    assert "no assistant" in refused(stack, "assistants", "update", "01NOSUCHASSISTANT", "--echo", "on")
    assert "no assistant" in refused(stack, "assistants", "show", "01NOSUCHASSISTANT")
    preset = cli(stack, *base, "--turn-preset", "loud", ok=False)
    assert preset.returncode == 2 and "'loud' is none of quiet, speaker" in preset.stderr, preset.stderr
    assert cli_json(stack, "assistants", "show", aid)["turn"] is None


# --- devices ----------------------------------------------------------------------------------


async def test_devices_list(stack: tuple[EmbeddedServer, Path], services: Services) -> None:
    owner, other = email(), email()
    user = create_user(stack, owner)
    assert cli(stack, "devices", "list", "--user", owner).stdout.strip() == f"{owner} has no devices"
    state = await services.accounts.require(user["user_id"])
    bound = []
    for n in range(2):
        device = f"AA:BB:CC:00:{n:02d}:{new_id()[-2:]}"
        code = (await services.devices.activation(device, "client")).code
        assert code
        state = await services.accounts.require(user["user_id"])
        binding, _ = await services.devices.bind(state, code, user["default_assistant_id"], f"room {n}")
        bound.append(binding.device_id)

    mine = cli_json(stack, "devices", "list", "--user", owner)
    assert [d["device_id"] for d in mine] == sorted(bound)
    assert {d["assistant_id"] for d in mine} == {user["default_assistant_id"]}
    assert [d["name"] for d in mine] == ["room 0", "room 1"]
    table = cli(stack, "devices", "list", "--wide").stdout
    assert table.splitlines()[0].split() == ["device", "owner", "assistant", "name", "bound"]
    for device in bound:
        assert owner in line_of(table, device)
        assert f"Assistant ({user['default_assistant_id']})" in line_of(table, device)
    narrow = cli(stack, "devices", "list", "--user", owner).stdout
    assert max(map(len, narrow.splitlines())) <= 100
    assert "Assistant" in narrow and user["default_assistant_id"] not in narrow
    create_user(stack, other)
    assert cli_json(stack, "devices", "list", "--user", other) == []

    await services.devices.unbind(user["user_id"], bound[0])
    assert [d["device_id"] for d in cli_json(stack, "devices", "list", "--user", owner)] == bound[1:]
    assert bound[0] not in cli(stack, "devices", "list").stdout


async def test_devices_bind(stack: tuple[EmbeddedServer, Path], services: Services) -> None:
    owner, other = email(), email()
    user, stranger = create_user(stack, owner), create_user(stack, other)
    device = f"AA:BB:CC:01:{new_id()[-2:]}:{new_id()[-2:]}"
    code = (await services.devices.activation(device, "client")).code
    assert code
    # Only the owner's own assistants; a bad or unknown code names what is wrong.
    assert "no assistant" in refused(stack, "devices", "bind", code, "--user", owner, "--assistant",
                                     stranger["default_assistant_id"])
    assert "invalid binding" in refused(stack, "devices", "bind", "1" * 100, "--user", owner)
    assert "unknown or expired" in refused(stack, "devices", "bind", "000000x", "--user", owner)

    bound = cli_json(stack, "devices", "bind", code, "--user", owner, "--name", "hall")
    assert bound == {"device_id": device.lower(), "user_id": user["user_id"],
                     "assistant_id": user["default_assistant_id"], "name": "hall"}
    collected = await services.devices.activation(device, "client")  # the device asks again
    assert collected.status == "bound" and collected.token
    grant = await services.tokens.verify_device(collected.token, device)
    assert (grant.user_id, grant.assistant_id) == (user["user_id"], user["default_assistant_id"])
    assert [d["device_id"] for d in cli_json(stack, "devices", "list", "--user", owner)] == [device.lower()]
    assert "used" in refused(stack, "devices", "bind", code, "--user", owner)


# --- without a projection service -------------------------------------------------------------


def test_without_a_projection_service_lists_read_the_file(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    try:
        alone = (server, tmp_path / "data")
        address = email()
        create_user(alone, address)
        # No service and no file yet: said plainly.
        assert "vagent projections rebuild" in refused(alone, "users", "list")
        cli(alone, "projections", "rebuild")
        assert [u["email"] for u in cli_json(alone, "users", "list")] == [address]
        assert len(cli_json(alone, "assistants", "list")) == 1
    finally:
        server.stop()

