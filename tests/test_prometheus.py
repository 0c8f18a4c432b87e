"""Prometheus metrics through a real `vagent up`: a typed turn over /ws, a tool turn and a
voice turn move the stage histograms, counters and gauges the edge's /metrics shows; a
real Prometheus server scrapes it and answers a histogram query; `vagent actor run
--metrics-port` serves its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from bus.server import free_port
from devservers.echo_llm import OpenAIServer
from tests.fixtures.audio import HERE
from tests.procs import Proc, running, vagent
from tests.test_metrics import dashboard_queries

PROMETHEUS = "/usr/bin/prometheus"
PRICES = """
[[prices]]
provider = "openai"
model = "gpt-4o-mini"
prompt_per_million = 150.0
completion_per_million = 600.0

[[prices]]
provider = "openai"
prompt_per_million = 9999.0
completion_per_million = 9999.0
"""

Labels = frozenset[tuple[str, str]]


def scrape(url: str) -> dict[tuple[str, Labels], float]:
    text = httpx.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def stack(llm: OpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str, str]]:
    """`vagent up` with a price table: (the process, its NATS URL, its edge's URL)."""
    data = tmp_path_factory.mktemp("data")
    config = data / "vagent.toml"
    config.write_text(PRICES)
    port, edge_port = free_port(), free_port()
    with running(["up", "--port", str(port), "--data-dir", str(data), "--edge-port", str(edge_port)],
                 "vagent is up", OPENAI_BASE_URL=llm.base_url, VAGENT_CONFIG=str(config)) as proc:
        yield proc, f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{edge_port}"


@pytest.fixture(scope="module")
def turns(stack: tuple[Proc, str, str], llm: OpenAIServer) -> dict[tuple[str, Labels], float]:
    """A typed turn over /ws (sessions and connections counted while it is open), a tool turn
    and a voice turn; then the edge's metrics once every stage of them is in."""
    _, nats, edge = stack
    open_samples = asyncio.run(_typed_turn(edge))
    assert value(open_samples, "vagent_sessions_active", transport="ws") == 1
    assert value(open_samples, "vagent_connections_active", transport="ws") == 1
    llm.tool_arguments["calculator"] = json.dumps({"expression": "2+3"})
    chat = vagent("chat", "--nats", nats, stdin="use calculator please\n/quit\n", timeout=120)
    assert "The tool said: 2+3 = 5." in chat.stdout, chat.stdout + chat.stderr
    said = vagent("say", "--audio", str(HERE / "what_time.wav"), "--nats", nats, timeout=240)
    assert said.returncode == 0, said.stderr
    deadline = time.monotonic() + 30
    while True:  # the voice turn's tts.started may be appended after `say` printed the answer
        samples = scrape(edge + "/metrics")
        if value(samples, "vagent_turn_stage_seconds_count", stage="first_audio", input="voice") or \
                time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


async def _typed_turn(edge: str) -> dict[tuple[str, Labels], float]:
    async with websockets.connect(edge.replace("http://", "ws://") + "/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "session"
        await ws.send(json.dumps({"type": "user.text", "text": "hello there"}))
        while json.loads(await ws.recv())["type"] != "assistant.message":
            pass
        return await asyncio.to_thread(scrape, edge + "/metrics")


def test_vagent_up_names_its_metrics_address(stack: tuple[Proc, str, str]) -> None:
    proc, _, edge = stack
    assert f"  metrics      {edge}/metrics  (Prometheus)" in proc.output()


def test_every_stage_of_a_voice_turn_is_observed_in_order(turns: dict[tuple[str, Labels], float]) -> None:
    stages = ("transcript", "first_token", "first_sentence", "first_audio")
    counts = [value(turns, "vagent_turn_stage_seconds_count", stage=s, input="voice") for s in stages]
    assert counts == [1, 1, 1, 1]
    # One voice turn: each stage ends after the one before it, all from the end of speech.
    sums = [value(turns, "vagent_turn_stage_seconds_sum", stage=s, input="voice") for s in stages]
    assert 0 < sums[0] <= sums[1] <= sums[2] <= sums[3] < 30, sums
    assert value(turns, "vagent_turns_total", input="voice") == 1
    # What was heard and said aloud, by who heard and who spoke it.
    assert 1 < value(turns, "vagent_audio_seconds_total", direction="in", provider="moonshine") < 5
    assert value(turns, "vagent_audio_seconds_total", direction="out", provider="piper") > 1


def test_typed_turns_time_user_text_to_first_delta(turns: dict[tuple[str, Labels], float]) -> None:
    assert value(turns, "vagent_turn_stage_seconds_count", stage="first_token", input="text") == 2
    assert 0 < value(turns, "vagent_turn_stage_seconds_sum", stage="first_token", input="text") < 10
    assert value(turns, "vagent_turns_total", input="text") == 2
    # A bucket holds the observations at or under its bound: +Inf holds them all.
    assert value(turns, "vagent_turn_stage_seconds_bucket", stage="first_token", input="text",
                 le="+Inf") == 2
    assert value(turns, "vagent_sessions_total", transport="ws") == 1
    assert value(turns, "vagent_sessions_active", transport="ws") == 0  # closed since


def test_tool_calls_tokens_and_cost_by_the_models_own_price(turns: dict[tuple[str, Labels], float]) -> None:
    assert value(turns, "vagent_tool_calls_total", tool="calculator", outcome="ok") == 1
    prompt = value(turns, "vagent_llm_tokens_total", provider="openai", model="gpt-4o-mini", kind="prompt")
    completion = value(turns, "vagent_llm_tokens_total", provider="openai", model="gpt-4o-mini",
                       kind="completion")
    assert prompt > 0 and completion > 0
    cost = value(turns, "vagent_llm_cost_total", provider="openai", model="gpt-4o-mini", currency="USD")
    # The model's own price, not the provider's "*" one.
    assert math.isclose(cost, (prompt * 150 + completion * 600) / 1e6, rel_tol=1e-9)


def test_actors_handlers_and_consumers_are_measured(turns: dict[tuple[str, Labels], float]) -> None:
    # Every input, the tool result and the greeting-less session starts went through the dialogue.
    assert value(turns, "vagent_handler_seconds_count", actor="dialogue", outcome="ok") >= 4
    assert value(turns, "vagent_handler_seconds_count", actor="tools", outcome="ok") >= 1
    for actor in ("asr", "dialogue", "tools", "tts"):
        assert ("vagent_consumer_pending", frozenset({("actor", actor)})) in turns
        assert ("vagent_consumer_ack_pending", frozenset({("actor", actor)})) in turns
    assert ("vagent_dead_letters", frozenset()) in turns


def test_an_actor_process_serves_its_own_metrics(stack: tuple[Proc, str, str],
                                                 turns: dict[tuple[str, Labels], float]) -> None:
    _, nats, _ = stack
    port = free_port()
    with running(["actor", "run", "tools", "--nats", nats, "--metrics-port", str(port)],
                 "running on") as proc:
        assert f"metrics at http://127.0.0.1:{port}/metrics" in proc.output()
        deadline = time.monotonic() + 10
        while ("vagent_consumer_pending", frozenset({("actor", "tools")})) not in (
                samples := scrape(f"http://127.0.0.1:{port}/metrics")):
            assert time.monotonic() < deadline, samples
            time.sleep(0.2)
        # This process ran no turn: the edge's and the other actors' counts are not here.
        assert value(samples, "vagent_turns_total", input="text") == 0


def test_a_prometheus_server_scrapes_the_edge_and_answers_a_histogram_query(
        stack: tuple[Proc, str, str], turns: dict[tuple[str, Labels], float], tmp_path: Path) -> None:
    _, _, edge = stack
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: vagent
    static_configs:
      - targets: ["{edge.removeprefix('http://')}"]
""")
    with prometheus(config, tmp_path / "tsdb", port) as api:
        count = query(api, 'vagent_turn_stage_seconds_count{stage="first_audio",input="voice"}')
        assert count[0]["metric"]["job"] == "vagent" and float(count[0]["value"][1]) == 1
        median = query(api, 'histogram_quantile(0.5, sum by (le) '
                            '(vagent_turn_stage_seconds_bucket{stage="first_token"}))')
        assert 0 < float(median[0]["value"][1]) <= 30
        # The Grafana dashboard's queries are PromQL this Prometheus accepts.
        for promql in dashboard_queries():
            answer = httpx.get(api + "/api/v1/query", timeout=10,
                               params={"query": promql.replace("$__rate_interval", "1m")}).json()
            assert answer["status"] == "success", (promql, answer)


@contextlib.contextmanager
def prometheus(config: Path, storage: Path, port: int) -> Iterator[str]:
    """Debian's Prometheus server on `port` with `config`; stopped (killed if it must be)."""
    log = (storage.parent / "prometheus.log").open("w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={storage}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(api + "/-/ready", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, \
                (storage.parent / "prometheus.log").read_text()
            time.sleep(0.2)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(api: str, promql: str, timeout: float = 30) -> list[dict[str, object]]:
    """The query's result once it has one (the first scrapes take a second or two)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(api + "/api/v1/query", params={"query": promql}, timeout=10).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        if result and result[0]["value"][1] != "NaN":  # type: ignore[index]
            return result
        assert time.monotonic() < deadline, f"no result for {promql}: {answer}"
        time.sleep(0.5)
