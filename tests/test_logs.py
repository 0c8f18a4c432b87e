"""The log lines as `hosting.logs.setup` writes them: each failure says why on its one line,
and a line never lands inside an answer a command is streaming to stdout."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from hosting import logs
from hosting.logs import console


@pytest.fixture(autouse=True)
def handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The real handler; the root logger as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.delenv("VAGENT_DEBUG", raising=False)
    monkeypatch.delenv("VAGENT_LOG_FORMAT", raising=False)
    logs.setup("INFO")
    yield
    root.handlers[:], root.level = handlers, level


@contextlib.contextmanager
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """stdout and stderr in memory (in the test's body: pytest sets its own capture again
    between a fixture's setup and the call)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


def test_an_error_says_why_on_its_line_without_the_debug_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    log = logging.getLogger("vagent.tts")
    with captured() as (_, err):
        try:
            raise ValueError("the sample rate 44100 is not\nsupported")
        except ValueError:
            log.exception("encoding failed", extra={"aggregate": "s1"})
        line = err.getvalue()
        assert line.count("\n") == 1 and "Traceback" not in line
        assert line.endswith(
            'encoding failed aggregate=s1 error="ValueError: the sample rate 44100 is not supported"\n')

        try:
            raise TimeoutError
        except TimeoutError as exc:
            log.error("gave up", exc_info=exc)
        assert err.getvalue().splitlines()[-1].endswith("gave up error=TimeoutError")

        # A reason the call site gave itself is kept.
        try:
            raise OSError("gone")
        except OSError:
            log.exception("store failed", extra={"error": "its own words"})
        assert err.getvalue().splitlines()[-1].endswith('store failed error="its own words"')

        monkeypatch.setenv("VAGENT_DEBUG", "1")
        try:
            raise KeyError("k")
        except KeyError:
            log.exception("lookup failed")
    assert "lookup failed error=\"KeyError: 'k'\"\nTraceback (most recent call last)" in err.getvalue()


def test_a_log_line_written_mid_answer_goes_on_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both streams to one place, as in a terminal or with 2>&1.
    both = io.StringIO()
    monkeypatch.setattr(sys, "stdout", both)
    monkeypatch.setattr(sys, "stderr", both)
    console.write("A dragon and a kettle are")
    # From another thread, as the bus client's callbacks and executors log.
    thread = threading.Thread(target=logging.getLogger("vagent.bus").warning, args=("nats disconnected",))
    thread.start()
    thread.join()
    logging.getLogger("vagent.bus").info("nats reconnected")
    console.write(" friends.")
    console.end_line()
    lines = both.getvalue().splitlines()
    assert lines[0] == "A dragon and a kettle are"
    assert lines[1].endswith("WARNING vagent.bus nats disconnected")
    assert lines[2].endswith("INFO  vagent.bus nats reconnected")  # no blank line between
    assert lines[3] == " friends."
    assert both.getvalue().endswith("\n")


def test_apart_stdout_gets_the_answer_alone() -> None:
    with captured() as (out, err):
        console.write("A dragon and a kettle are")
        logging.getLogger("vagent.bus").warning("nats disconnected")
        console.write(" friends.")
        console.end_line()
    assert out.getvalue() == "A dragon and a kettle are friends.\n"
    assert err.getvalue().count("\n") == 1 and "nats disconnected" in err.getvalue()


def test_held_lines_reach_stdout_whole() -> None:
    shown: list[str] = []
    with captured() as (out, _):
        console.hold(lambda: shown.append(console.partial))
        try:
            console.write("assistant> Once upon")
            logging.getLogger("vagent.bus").warning("nats disconnected")
            console.write(" a time.\nThe end")
            assert out.getvalue() == "assistant> Once upon a time.\n"
            console.end_line()
        finally:
            console.hold(None)
    assert out.getvalue() == "assistant> Once upon a time.\nThe end\n"
    assert shown == ["assistant> Once upon", "The end", ""]


def test_a_real_terminal_pair_is_one_place() -> None:
    """stdout and stderr on one pipe (2>&1) are recognised as one place."""
    code = ("import sys; from hosting.logs import _same_place; "
            "print(_same_place(sys.stdout, sys.stderr))")
    joined = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, check=True)
    apart = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (joined.stdout.strip(), apart.stdout.strip()) == ("True", "False")
