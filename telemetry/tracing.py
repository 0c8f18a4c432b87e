"""OpenTelemetry traces: one trace per turn, across processes.

The W3C `traceparent` every event carries in its NATS headers is the link: a span is
started as the child of the traceparent of what caused it, and whatever it publishes
carries the span's own traceparent, so the next process's span hangs under it.

Off unless `setup()` is given an OTLP endpoint: then no tracer provider exists, `enabled()`
is False and every call site skips its span before building anything. Parents are passed
explicitly as traceparent strings (no OpenTelemetry context is attached), which is all an
event-driven handler needs and keeps a span's cost to its own creation and export.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanProcessor,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from schemas import Event

log = logging.getLogger("vagent.tracing")

Attributes = Mapping[str, AttributeValue]
ROLES = ("edge", "actors")  # a process's parts, each exported as `<service_name>-<role>`
SCOPE = "vagent"
CLIENT, SERVER, INTERNAL = SpanKind.CLIENT, SpanKind.SERVER, SpanKind.INTERNAL

_providers: dict[str, TracerProvider] = {}
_tracers: dict[str, trace.Tracer] = {}
_paused: dict[str, trace.Tracer] = {}


def enabled() -> bool:
    return bool(_tracers)


def setup(endpoint: str, service_name: str = "vagent", roles: Sequence[str] = ROLES) -> bool:
    """Export spans to the OTLP/HTTP collector at `endpoint` (its base URL); an empty
    endpoint leaves tracing off. True when tracing is on."""
    if not endpoint:
        return False
    # Imported only when on: the exporter pulls in protobuf and requests.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    _install(lambda: BatchSpanProcessor(OTLPSpanExporter(endpoint=url)), service_name, roles)
    log.info("tracing on", extra={"endpoint": url})
    return True


def use_exporter(exporter: SpanExporter, service_name: str = "vagent",
                 roles: Sequence[str] = ROLES, *, batch: bool = False) -> None:
    """Spans to `exporter` (the SDK's in-memory one in tests, a local sink in a bench):
    each span handed over as it ends, or batched as `setup` does."""
    def processor() -> SpanProcessor:
        return BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    _install(processor, service_name, roles)


def _install(processor: object, service_name: str, roles: Sequence[str]) -> None:
    shutdown()
    for role in roles:
        provider = TracerProvider(resource=Resource.create({"service.name": f"{service_name}-{role}"}))
        provider.add_span_processor(processor())  # type: ignore[operator]
        _providers[role] = provider
        _tracers[role] = provider.get_tracer(SCOPE)


def pause(paused: bool) -> None:
    """Stop making spans (True) or make them again (False), the exporters kept: for a bench
    comparing turns with and without tracing in one process."""
    if paused and _tracers:
        _paused.update(_tracers)
        _tracers.clear()
    elif not paused and _paused:
        _tracers.update(_paused)
        _paused.clear()


def flush() -> None:
    for provider in _providers.values():
        provider.force_flush()


def shutdown() -> None:
    """Export what is pending and turn tracing off."""
    providers = list(_providers.values())
    _providers.clear()
    _tracers.clear()
    _paused.clear()
    for provider in providers:
        provider.shutdown()


def _tracer(role: str) -> trace.Tracer | None:
    return _tracers.get(role) or next(iter(_tracers.values()), None)


def _parent(traceparent: str | None) -> OtelContext | None:
    """The context of a remote parent span named by a W3C traceparent; None (a new trace)
    when there is none or it is malformed."""
    parts = (traceparent or "").split("-")
    if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        parent = SpanContext(int(parts[1], 16), int(parts[2], 16), is_remote=True,
                             trace_flags=TraceFlags(int(parts[3], 16)))
    except ValueError:
        return None
    if not parent.is_valid:
        return None
    return trace.set_span_in_context(NonRecordingSpan(parent))


def traceparent(span: trace.Span) -> str:
    """The W3C traceparent naming `span`: what effects published under it carry."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def start(name: str, parent: str | None, *, role: str = "actors", attributes: Attributes | None = None,
          start_ns: int | None = None, kind: SpanKind = SpanKind.INTERNAL) -> Span | None:
    """A span begun now (or at `start_ns`, epoch ns), child of `parent`; None when tracing
    is off. The caller ends it (`end`)."""
    tracer = _tracer(role)
    if tracer is None:
        return None
    return tracer.start_span(name, context=_parent(parent), kind=kind, attributes=attributes,
                             start_time=start_ns)  # type: ignore[return-value]


def end(span: Span | None, error: BaseException | None = None, end_ns: int | None = None) -> None:
    if span is None:
        return
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end(end_time=end_ns)


def failed(span: Span | None, why: str) -> None:
    """Mark `span` failed without an exception (a tool's error answer)."""
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, why[:200]))


def span(name: str, parent: str | None, *, role: str = "actors", attributes: Attributes | None = None,
         start_ns: int | None = None, kind: SpanKind = SpanKind.INTERNAL
         ) -> AbstractContextManager[Span | None]:
    """A span around a block (None inside when tracing is off); an exception leaving the
    block marks it failed. Cancellation (an interrupted turn) is recorded as an event."""
    opened = start(name, parent, role=role, attributes=attributes, start_ns=start_ns, kind=kind)
    # Off: one shared do-nothing context, not a generator made for each block.
    return _OFF if opened is None else _around(opened)


_OFF: AbstractContextManager[None] = nullcontext()


@contextmanager
def _around(opened: Span) -> Iterator[Span]:
    try:
        yield opened
    except Exception as exc:
        end(opened, exc)
        raise
    except BaseException as exc:
        opened.add_event("cancelled", {"exception.type": type(exc).__name__})
        end(opened)
        raise
    end(opened)


def record(name: str, parent: str | None, start_ns: int, end_ns: int | None = None, *,
           role: str = "actors", attributes: Attributes | None = None,
           events: Sequence[tuple[str, int, Attributes]] = (),
           kind: SpanKind = SpanKind.INTERNAL) -> str | None:
    """A span of work already done (its times known afterwards); returns its traceparent,
    None when tracing is off."""
    opened = start(name, parent, role=role, attributes=attributes, start_ns=start_ns, kind=kind)
    if opened is None:
        return None
    for event_name, at_ns, event_attributes in events:
        opened.add_event(event_name, event_attributes, timestamp=at_ns)
    end(opened, end_ns=end_ns or time.time_ns())
    return traceparent(opened)


def event_attributes(event: Event) -> dict[str, AttributeValue]:
    """What a span says of the event it handles: its type, and the session and turn."""
    attributes: dict[str, AttributeValue] = {"vagent.event.type": event.type,
                                             "vagent.event.id": event.id}
    for field, key in (("session_id", "vagent.session_id"), ("turn_id", "vagent.turn_id")):
        value = getattr(event, field, None)
        if value:
            attributes[key] = value
    return attributes
