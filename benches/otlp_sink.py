"""An OTLP/HTTP trace receiver that only counts what it is sent: the collector a bench
exports to, in a process of its own so that decoding spans costs the measured one nothing.

`python -m benches.otlp_sink PORT`; `GET /count` answers the spans received so far."""

from __future__ import annotations

import http.server
import sys
import threading
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Sink(http.server.BaseHTTPRequestHandler):
    spans = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        with Sink.lock:
            Sink.spans += sum(len(scope.spans) for resource in request.resource_spans
                              for scope in resource.scope_spans)
        self._answer(b"", "application/x-protobuf")

    def do_GET(self) -> None:
        self._answer(str(Sink.spans).encode(), "text/plain")

    def _answer(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
    server.serve_forever()


if __name__ == "__main__":
    main()
