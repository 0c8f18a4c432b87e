"""`vagent eval`: suites run through a temporary isolated stack (its own nats-server, the
real actors) against the echo LLM and the bundled local model; a failed expectation fails
the command and its JUnit XML; a bad suite is refused at the line that is wrong; recorded
sessions become a suite that passes against the model that recorded them."""

from __future__ import annotations

import asyncio
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.client import Bus
from bus.server import EmbeddedServer
from devservers.echo_llm import OpenAIServer
from evals.engine import TurnResult, check, run_suite, similarity
from evals.llms import Servers
from evals.suite import Judge, Latency, SuiteError, Tool, load_suite, parse_suite
from schemas import SessionStarted, ToolCall, UserText, new_id
from settings.config import parse
from settings.llm import with_local_llm
from tests.api_harness import Api
from tests.conftest import wait_for
from tests.procs import ROOT, vagent

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE = ROOT / "docs" / "examples" / "smoke.yaml"
pytestmark = pytest.mark.stack("dialogue", "tools")


class YesNoJudge(OpenAIServer):
    """A judge that says yes when the answer holds the criterion's last word."""

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        question = messages[-1]["content"]
        criterion = question.split("Criterion: ", 1)[1].split("\n", 1)[0]
        answer = question.split("The assistant answered: ", 1)[1].split("\n", 1)[0]
        return "Yes." if criterion.split()[-1].lower() in answer.lower() else "No."


@pytest.fixture
def judge() -> Iterator[YesNoJudge]:
    server = YesNoJudge().start()
    yield server
    server.stop()


SUITE = """\
name: mixed
provider: echo
conversations:
  - name: typed
    turns:
      - say: hello there
        contains: hello
        judge: "the answer mentions hello"
        latency: {first_delta_ms: 5000, answer_ms: 10000}
      - say: use get_time please
        tool: get_time
      - say: good night
        contains: goodbye
        judge: "the answer mentions goodbye"
  - name: spoken
    turns:
      - audio: what_time.wav
        contains: time
        language: en
        latency: {transcript_ms: 10000, first_audio_ms: 30000}
"""


def test_a_failing_expectation_fails_the_command_and_its_junit(tmp_path: Path, judge: YesNoJudge) -> None:
    shutil.copy(FIXTURES / "what_time.wav", tmp_path / "what_time.wav")
    suite = tmp_path / "mixed.yaml"
    suite.write_text(SUITE)
    junit = tmp_path / "out.xml"

    done = vagent("eval", str(suite), "--junit", str(junit), "--judge-llm", judge.base_url, "--wide",
                  timeout=420)

    assert done.returncode == 1, done.stdout + done.stderr
    table = done.stdout
    assert f"at {judge.base_url}" in table.splitlines()[0], table
    rows = {tuple(line.split()[:2]): line for line in table.splitlines()
            if line.startswith(("typed", "spoken"))}
    assert rows[("typed", "1")].rstrip().endswith("pass")
    assert rows[("typed", "2")].rstrip().endswith("pass")
    assert "FAIL contains, judge" in rows[("typed", "3")]
    assert rows[("spoken", "1")].rstrip().endswith("pass"), table
    assert f"{suite}:13: typed turn 3: contains 'goodbye': got 'You said: good night.'" in table
    assert f"{suite}:14: typed turn 3: judge 'the answer mentions goodbye': got No." in table
    assert "4 turns: 3 passed, 1 failed" in table
    # Both judged turns were asked of the judge, with the answer in the question.
    asked = [r["messages"][-1]["content"] for r in judge.requests]
    assert len(asked) == 2 and "The assistant answered: You said: hello there." in asked[0]

    root = ET.parse(junit).getroot()
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "4", "1")
    cases = root.findall("./testsuite/testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("mixed.typed", "turn 1: hello there"), ("mixed.typed", "turn 2: use get_time please"),
        ("mixed.typed", "turn 3: good night"), ("mixed.spoken", "turn 1: [what_time.wav]")]
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("line") for c in failed] == ["12"]
    failure = failed[0].find("failure")
    assert failure is not None and failure.get("message") == \
        "contains 'goodbye'; judge 'the answer mentions goodbye'"
    assert f"{suite}:13: contains 'goodbye': got 'You said: good night.'" in (failure.text or "")
    out = cases[3].findtext("system-out") or ""
    assert "transcript: What time" in out and "transcript_ms:" in out  # the ASR heard it
    assert "first_audio_ms:" in out  # a first_audio_ms budget: the answers were spoken
    assert "tool: get_time({})" in (cases[1].findtext("system-out") or "")


def test_the_example_suite_is_green_against_the_echo_llm(tmp_path: Path) -> None:
    junit = tmp_path / "smoke.xml"
    done = vagent("eval", str(EXAMPLE), "--junit", str(junit), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 turns: 3 passed, 0 failed" in done.stdout
    assert ET.parse(junit).getroot().get("failures") == "0"


async def test_the_local_model_answers_one_short_turn(tmp_path: Path) -> None:
    """The bundled SmolLM2 served by llama-server: whatever it says is words (a pass), and
    never the made-up word (a failure)."""
    suite = parse_suite("""\
provider: local
model: smollm2-135m
conversations:
  - turns:
      - say: Say hello.
        regex: "\\\\w+"
        not_contains: xylophonic-zebra
        contains: xylophonic-zebra
""", tmp_path / "local.yaml")
    result = await run_suite(suite, parse(""), tmp_path, timeout=120)
    (turn,) = result.turns
    assert turn.answer and turn.answer.strip()
    assert "smollm2-135m-instruct-q4_1" in result.llm
    assert [(c.expected, c.ok) for c in turn.checks] == [
        ("an answer", True), ("contains 'xylophonic-zebra'", False),
        ("not_contains 'xylophonic-zebra'", True), ("regex '\\\\w+'", True)]
    assert not result.passed


async def test_recorded_sessions_round_trip_into_a_suite_that_passes(
        stack: Api, module_nats: EmbeddedServer, tmp_path: Path) -> None:
    sid = "ev" + new_id()
    nats = module_nats.url  # the module's server, where the stack records
    record = await Bus.connect(nats, name="test-eval")
    try:
        await record.publish(SessionStarted(session_id=sid, transport="test"))
        for text in ("hello there", "use get_time please"):
            typed = UserText(session_id=sid, text=text)
            await record.publish(typed)
            await wait_for(record, sid, lambda es, tid=typed.id: any(  # type: ignore[misc]
                getattr(e, "turn_id", None) == tid and e.type == "assistant.message"
                and not getattr(e, "tool_calls", None) for e in es))
        out = tmp_path / "recorded.yaml"
        made = await asyncio.to_thread(vagent, "eval", "--from-sessions", sid, "--nats", nats,
                                       "--out", str(out), timeout=60)
        assert made.returncode == 0, made.stderr
        assert f"wrote {out}: 1 conversation(s), 2 turn(s)" in made.stdout
        by_since = await asyncio.to_thread(vagent, "eval", "--from-sessions", "--since", "1h", "--nats", nats,
                                           "--out", str(tmp_path / "since.yaml"), timeout=60)
        assert by_since.returncode == 0, by_since.stderr
        assert f"name: {sid}" in (tmp_path / "since.yaml").read_text()
    finally:
        await record.close()

    suite = load_suite(out)
    (conversation,) = suite.conversations
    assert conversation.name == sid
    assert [t.say for t in conversation.turns] == ["hello there", "use get_time please"]
    first, second = conversation.turns
    assert [type(e).__name__ for e in first.expect] == ["SimilarTo"]
    assert first.expect[0].text == "You said: hello there."  # type: ignore[union-attr]
    assert sorted(type(e).__name__ for e in second.expect) == ["SimilarTo", "Tool"]

    result = await run_suite(suite, parse(""), tmp_path, llm="echo")
    assert result.passed, [(t.input, t.failures) for t in result.turns]
    # A changed model answers otherwise: the same suite fails where the answer moved.
    newer = Newer().start()
    try:
        changed = await run_suite(suite, parse(""), tmp_path, llm=newer.base_url, llm_model="m2")
    finally:
        newer.stop()
    assert [t.passed for t in changed.turns] == [False, True]
    assert "similar_to" in changed.turns[0].failures[0].expected


class Newer(OpenAIServer):
    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        if messages and messages[-1]["role"] == "tool":
            return super().reply_for(messages)
        return "I'm afraid I cannot help with that today, sorry."


def test_similarity_reads_words_not_punctuation() -> None:
    assert similarity("You said: hello there.", "you said hello there") == 1.0
    assert similarity("You said: hello there.", "I cannot help with that") < 0.3


BAD = [
    ("name: x\nconversations:\n  - turns:\n      - say: hi\n        contains: hi\n      - say: a\n"
     "      - say: b\n        contain: x\n",
     "bad.yaml:8: turn 3: unknown expectation 'contain' (did you mean 'contains'?)"),
    ("name: x\nprovidr: echo\nconversations: []\n",
     "bad.yaml:2: unknown key 'providr' (did you mean 'provider'?)"),
    ("name: x\nconversations:\n  - turns:\n      - say: hi\n        latency:\n          first_delta: 300\n",
     "bad.yaml:6: turn 1: unknown latency stage 'first_delta' (did you mean 'first_delta_ms'?)"),
    ("conversations:\n  - turns:\n      - say: hi\n        regex: \"([\"\n",
     "bad.yaml:4: turn 1: regex '([' does not compile"),
    ("conversations:\n  - turns:\n      - say: hi\n      - audio: nope.wav\n", "bad.yaml:4: turn 2: audio: "),
    ("conversations:\n  - turns:\n      - contains: hi\n", "bad.yaml:3: turn 1: say: TEXT or audio: FILE"),
    ("conversations:\n  - turns:\n      - say: hi\n        latency: {answer_ms: fast}\n",
     "bad.yaml:4: turn 1: latency answer_ms must be a number, not 'fast'"),
    ("provider: ecko\nconversations:\n  - turns: [{say: hi}]\n",
     "bad.yaml:1: provider: unknown provider 'ecko' (did you mean 'echo'?)"),
    ("conversations:\n  - turns:\n      - say: hi\n        tool: {nme: get_time}\n",
     "bad.yaml:4: turn 1: unknown tool key 'nme' (did you mean 'name'?)"),
    ("conversations:\n  - turns:\n      - say: hi\n        language: fr\n",
     "bad.yaml:4: turn 1: unknown language 'fr'"),
    ("conversations: [\n", "bad.yaml:2: not YAML"),
    ("name: x\n", "bad.yaml:1: no 'conversations'"),
]


@pytest.mark.parametrize(("text", "error"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_bad_suite_is_refused_at_its_line(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(SuiteError) as refused:
        parse_suite(text, tmp_path / "bad.yaml")
    assert str(refused.value).startswith(f"{tmp_path}/{error}"), str(refused.value)


def test_the_command_names_the_line_and_exits_2(tmp_path: Path) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(BAD[0][0])
    done = vagent("eval", str(suite))
    assert done.returncode == 2
    assert f"error: {tmp_path}/{BAD[0][1]}" in done.stderr


async def test_tool_arguments_and_latency_budgets_are_checked() -> None:
    sid, turn_id = "s", "t"
    calls = [ToolCall(session_id=sid, turn_id=turn_id, call_id="c1", name="get_weather",
                      arguments='{"city": "Paris", "days": 3, "units": "metric"}')]
    result = TurnResult(conversation="c", n=1, line=1, input="weather?", answer="Sunny.",
                        latency_ms={"first_delta_ms": 420.0})

    async def holds(expectation: Any) -> bool:
        return (await check(expectation, result, list(calls), "weather?", None)).ok

    assert await holds(Tool(name="get_weather", line=2))
    assert await holds(Tool(name="get_weather", line=2, arguments={"city": "Paris", "days": 3}))
    assert not await holds(Tool(name="get_weather", line=2, arguments={"city": "Rome"}))
    assert not await holds(Tool(name="get_weather", line=2, arguments={"country": "France"}))
    assert await holds(Tool(name="get_weather", line=2, arguments_match={"city": "^Pa", "days": "^[1-7]$"}))
    assert not await holds(Tool(name="get_weather", line=2, arguments_match={"units": "imperial"}))
    assert not await holds(Tool(name="get_time", line=2))
    assert await holds(Latency(stage="first_delta_ms", budget_ms=500, line=3))
    assert not await holds(Latency(stage="first_delta_ms", budget_ms=400, line=3))
    missed = await check(Latency(stage="first_audio_ms", budget_ms=9000, line=3), result, [], "", None)
    assert (missed.ok, missed.got) == (False, "not reached")
    unjudged = await check(Judge(prompt="is it sunny", line=4), result, [], "", None)
    assert not unjudged.ok and "no judge LLM" in unjudged.got


async def test_the_judge_is_the_configured_llm_but_never_the_bundled_model_unasked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAGENT_LLM_BASE_URL", "OPENAI_BASE_URL", "VAGENT_LOCAL_LLM_URL", "VAGENT_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    hosted = parse('[[llm.providers]]\nname = "acme"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "big"\n')
    judge = await Servers(hosted, tmp_path).judge(None, None)
    assert judge is not None and (judge.name, judge.model) == ("acme", "big")
    assert await Servers(parse(""), tmp_path).judge(None, None) is None
    served = with_local_llm(parse(""), "http://127.0.0.1:9/v1")  # what a running `vagent up` serves
    assert await Servers(served, tmp_path).judge(None, None) is None
    asked = await Servers(hosted, tmp_path).judge("http://127.0.0.1:8/v1", "small")
    assert asked is not None
    assert (asked.name, asked.base_url, asked.model) == ("judge", "http://127.0.0.1:8/v1", "small")
