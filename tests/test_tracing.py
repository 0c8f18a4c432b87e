"""Traces: one OpenTelemetry trace per turn, from the edge through the actors and back.

Spans go to the SDK's own in-memory exporter for the in-process stack, and over OTLP/HTTP
to a receiver in this test for `vagent up`."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import websockets
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.server import free_port
from devservers.echo_llm import OpenAIServer
from telemetry import tracing
from tests.api_harness import Api
from tests.procs import ROOT, running

pytestmark = pytest.mark.stack("dialogue", "tools", "tts")


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    yield exporter
    tracing.shutdown()


def ws_url(api: Api) -> str:
    return api.edge.url.replace("http://", "ws://") + "/ws?audio=pcm16"


async def typed_turn(api: Api, text: str) -> str:
    """A typed turn over /ws with audio out, until its answer is complete and its first
    audio frame arrived; the session's id."""
    async with websockets.connect(ws_url(api)) as ws:
        hello = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "user.text", "text": text}))
        answered = heard = False
        async with asyncio.timeout(60):
            while not (answered and heard):
                message = await ws.recv()
                if isinstance(message, bytes):
                    heard = True
                elif json.loads(message)["type"] == "assistant.message" and not json.loads(
                        message).get("tool_calls"):
                    answered = True
        return str(hello["session_id"])


async def turn_trace(exporter: InMemorySpanExporter, session_id: str, last: str,
                     timeout: float = 20) -> list[ReadableSpan]:
    """The spans of the trace the session's typed turn began, by start time, once `last`
    (the span that ends it) is among them."""
    async with asyncio.timeout(timeout):
        while True:
            done = exporter.get_finished_spans()
            edge = [s for s in done if s.name == "edge user.text"
                    and (s.attributes or {}).get("vagent.session_id") == session_id]
            if edge:
                trace_id = edge[0].context.trace_id  # type: ignore[union-attr]
                found = sorted((s for s in done if s.context and s.context.trace_id == trace_id),
                               key=lambda s: s.start_time or 0)
                if any(s.name == last for s in found):
                    return found
            await asyncio.sleep(0.05)


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in spans if s.name == name]
    assert len(named) == 1, (name, [s.name for s in spans])
    return named[0]


def parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, span.name
    return next(s for s in spans if s.context and s.context.span_id == span.parent.span_id)


def chain(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[str]:
    """Names from the trace's root down to `span`, by parent links."""
    names = [span.name]
    while span.parent is not None:
        span = parent_of(span, spans)
        names.append(span.name)
    return names[::-1]


async def test_a_typed_turn_is_one_trace_from_edge_to_first_audio(
        stack: Api, spans: InMemorySpanExporter) -> None:
    sid = await typed_turn(stack, "hello there")
    found = await turn_trace(spans, sid, "edge first audio")
    names = [s.name for s in found]
    chat = next(s for s in found if s.name.startswith("chat "))
    first_sentence = min((s for s in found if s.name == "tts assistant.sentence"),
                         key=lambda s: s.start_time or 0)
    # Every stage, each under the one that caused it, across the bus.
    assert chain(one(found, "edge first audio"), found) == [
        "edge user.text", "dialogue user.text", "tts assistant.sentence", "edge first audio"]
    assert chain(chat, found) == ["edge user.text", "dialogue user.text", chat.name]
    spoken = min((s for s in found if s.name == "tts sentence"), key=lambda s: s.start_time or 0)
    assert chain(spoken, found)[-2:] == ["tts assistant.sentence", "tts sentence"]
    assert (spoken.attributes or {})["vagent.tts.index"] == 0
    assert (spoken.end_time or 0) <= (one(found, "edge first audio").end_time or 0)
    assert names[0] == "edge user.text" and found[0].parent is None
    order = [one(found, "edge user.text"), one(found, "dialogue user.text"), chat,
             first_sentence, one(found, "edge first audio")]
    starts = [s.start_time or 0 for s in order]
    assert starts == sorted(starts), [s.name for s in order]
    # The LLM call in OpenTelemetry's GenAI terms.
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert chat.name == f"chat {attributes['gen_ai.request.model']}"
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"]
    assert int(attributes["gen_ai.usage.input_tokens"]) > 0  # type: ignore[arg-type]
    assert attributes["gen_ai.usage.output_tokens"] == len("You said: hello there.".split())
    ttft = float(attributes["gen_ai.response.time_to_first_token_ms"])  # type: ignore[arg-type]
    assert 0 <= ttft <= (chat.end_time - chat.start_time) / 1e6  # type: ignore[operator]
    assert [e.name for e in chat.events] == ["gen_ai.first_token"]
    assert chat.kind == trace.SpanKind.CLIENT
    edge = one(found, "edge user.text")
    assert (edge.attributes or {})["vagent.transport"] == "ws"
    assert edge.resource.attributes["service.name"] == "vagent-edge"
    assert chat.resource.attributes["service.name"] == "vagent-actors"
    assert (one(found, "dialogue user.text").attributes or {})["vagent.session_id"] == sid


async def test_a_tool_turn_holds_the_tool_call_and_the_second_step(
        stack: Api, spans: InMemorySpanExporter, llm: OpenAIServer) -> None:
    llm.tool_arguments["calculator"] = json.dumps({"expression": "2+3"})
    sid = await typed_turn(stack, "use the calculator please")
    found = await turn_trace(spans, sid, "edge first audio")
    tool = one(found, "execute_tool calculator")
    assert (tool.attributes or {})["gen_ai.tool.name"] == "calculator"
    assert tool.status.is_ok
    chats = [s for s in found if s.name.startswith("chat ")]
    assert len(chats) == 2  # the step that called the tool, the step that read its result
    assert chain(tool, found) == ["edge user.text", "dialogue user.text", "tools tool.call",
                                  tool.name]
    assert chain(chats[1], found) == ["edge user.text", "dialogue user.text", "tools tool.call",
                                      "dialogue tool.result", chats[1].name]
    assert chain(one(found, "edge first audio"), found)[-3:] == [
        "dialogue tool.result", "tts assistant.sentence", "edge first audio"]
    starts = [s.start_time or 0 for s in (chats[0], tool, chats[1], one(found, "edge first audio"))]
    assert starts == sorted(starts)


async def test_tracing_off_makes_no_spans_and_sets_no_provider(
        stack: Api, spans: InMemorySpanExporter) -> None:
    tracing.shutdown()
    try:
        assert not tracing.enabled()
        assert tracing.start("anything", None) is None
        assert not tracing.setup("", "vagent")  # no endpoint: stays off
        before = len(spans.get_finished_spans())
        await typed_turn(stack, "hello without traces")
        await asyncio.sleep(0.3)
        assert len(spans.get_finished_spans()) == before
        # Nothing installed process-wide either: OpenTelemetry's global is still its proxy.
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    finally:
        tracing.use_exporter(spans)


def test_a_turn_not_sampled_is_not_recorded_anywhere_downstream(
        monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter) -> None:
    """The SDK's sampling variables apply; the decision travels in the traceparent's flags,
    so the processes after the first follow it."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    try:
        with tracing.span("edge user.text", None, role="edge") as edge:
            assert edge is not None and not edge.is_recording()
            parent = tracing.traceparent(edge)
        assert not int(parent[-2:], 16) & 1  # the sampled flag is off
        with tracing.span("dialogue user.text", parent) as handler:
            assert handler is not None
            assert tracing.traceparent(handler).split("-")[1] == parent.split("-")[1]
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1")
        tracing.use_exporter(exporter)
        # A parent's decision wins over this process's own ratio.
        assert tracing.record("chat m", parent, 1) is not None
        assert exporter.get_finished_spans() == ()
    finally:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER")
        tracing.use_exporter(spans)


def test_off_does_not_load_the_exporter() -> None:
    """An unset endpoint costs nothing at start either: the OTLP exporter (protobuf,
    requests) is never imported."""
    probe = ("import sys\nfrom telemetry import tracing\nassert not tracing.setup('', 'vagent')\n"
             "print(any(m.startswith('opentelemetry.exporter') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=60)
    assert out.stdout.strip() == "False"


# --- over OTLP/HTTP, from `vagent up` -------------------------------------------------------

class Receiver:
    """An OTLP/HTTP trace receiver: what a collector at `otlp_endpoint` is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []  # (service.name, span)
        self.paths: list[str] = []
        received = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    service = next(a.value.string_value for a in resource_spans.resource.attributes
                                   if a.key == "service.name")
                    for scope in resource_spans.scope_spans:
                        received.spans += [(service, span) for span in scope.spans]
                received.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    served = Receiver()
    yield served
    served.close()


async def vagent_turn(port: int, text: str) -> str:
    """A typed turn over `vagent up`'s /ws until its answer; the session's id."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        hello = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "user.text", "text": text}))
        async with asyncio.timeout(30):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "assistant.message" and not message.get("tool_calls"):
                    return str(hello["session_id"])


def exported_turn(receiver: Receiver, session_id: str) -> dict[str, tuple[str, Any]]:
    """The spans of the trace the session's typed turn began, by name: (service, span)."""
    edge = next(span for _, span in receiver.spans if span.name == "edge user.text" and any(
        a.key == "vagent.session_id" and a.value.string_value == session_id
        for a in span.attributes))
    return {span.name: (service, span) for service, span in receiver.spans
            if span.trace_id == edge.trace_id}


async def test_vagent_up_exports_a_typed_and_a_tool_turn_over_otlp(
        receiver: Receiver, llm: OpenAIServer, tmp_path: Path) -> None:
    settings = tmp_path / "vagent.toml"
    settings.write_text(f'[telemetry]\notlp_endpoint = "{receiver.url}"\nservice_name = "otlptest"\n')
    port = free_port()
    llm.tool_arguments["calculator"] = json.dumps({"expression": "2+3"})
    # Its own NATS: the actors in this process (the stack above) must not take its events.
    with running(["up", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
                  "--edge-port", str(port), "--actors", "dialogue,tools"], "vagent is up",
                 OPENAI_BASE_URL=llm.base_url, VAGENT_CONFIG=str(settings),
                 OTEL_BSP_SCHEDULE_DELAY="100"):
        typed = await vagent_turn(port, "hello collector")
        tooled = await vagent_turn(port, "use the calculator please")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = [span.name for _, span in receiver.spans]
            if names.count("dialogue tool.result") and sum(
                    n.startswith("chat ") for n in names) >= 3:
                break
            await asyncio.sleep(0.1)
    assert set(receiver.paths) == {"/v1/traces"}
    turn = exported_turn(receiver, typed)
    edge = turn["edge user.text"][1]
    assert turn["edge user.text"][0] == "otlptest-edge"
    assert turn["dialogue user.text"][0] == "otlptest-actors"
    assert turn["dialogue user.text"][1].parent_span_id == edge.span_id
    chat = next(span for name, (_, span) in turn.items() if name.startswith("chat "))
    assert chat.parent_span_id == turn["dialogue user.text"][1].span_id
    assert {a.key for a in chat.attributes} >= {"gen_ai.operation.name", "gen_ai.request.model",
                                                "gen_ai.usage.input_tokens",
                                                "gen_ai.usage.output_tokens"}
    # The tool turn: the call, its run and the step after it, in the same trace.
    turn = exported_turn(receiver, tooled)
    tool = turn["execute_tool calculator"][1]
    assert tool.parent_span_id == turn["tools tool.call"][1].span_id
    assert turn["tools tool.call"][1].parent_span_id == turn["dialogue user.text"][1].span_id
    assert turn["dialogue tool.result"][1].parent_span_id == turn["tools tool.call"][1].span_id
    assert {service for service, _ in turn.values()} == {"otlptest-edge", "otlptest-actors"}
