"""A small OTLP/HTTP trace receiver for tests: what an observability backend (a Collector,
Jaeger, Langfuse, Phoenix) receives at ``/v1/traces``, decoded with the official protobuf
definitions (``opentelemetry-proto``) into plain spans a test can look at."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PATH = "/v1/traces"
SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: int  # Span.SpanKind
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    service: str  # the resource's service.name


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(attributes_of(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                ids = span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex()
                attributes = attributes_of(span.attributes)
                spans.append(ReceivedSpan(span.name, span.kind, *ids, attributes, service))
    return spans


class OtlpReceiver:
    """Listens on 127.0.0.1 in a thread of its own; ``url`` is the traces endpoint."""

    def __init__(self) -> None:
        self._arrived = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{PATH}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != PATH:
                    self.send_error(404)
                    return
                receiver.received(decode(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's output is not the place for an access log

        return Handler

    def received(self, spans: list[ReceivedSpan]) -> None:
        with self._arrived:
            self._spans.extend(spans)
            self.requests += 1
            self._arrived.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._arrived:
            return list(self._spans)

    def wait_for(
        self, ready: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 60.0
    ) -> list[ReceivedSpan]:
        """The spans received once ``ready`` holds for them (checked as each export arrives;
        fails after the timeout)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: ready(list(self._spans)), timeout_s):
                raise AssertionError(
                    f"not received in {timeout_s:g}s: {[(s.name, s.service) for s in self._spans]}"
                )
            return list(self._spans)


@contextmanager
def receiving() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver._server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver._server.shutdown()
        receiver._server.server_close()
        thread.join()
