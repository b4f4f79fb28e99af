"""Traces and logs of a real sender process: spans exported over OTLP/gRPC to a receiver the test runs, and
JSON log lines that name the span they were written in."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from services.common import bus
from tests.integration.test_sender import make_transactional
from tests.support.mtls import default_pki

ROOT = Path(__file__).resolve().parents[2]


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver (the collector's TraceService.Export), keeping every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[tuple[dict, object]] = []  # (resource attributes, span)

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[tuple[dict, object]]:
        """The spans received of one trace (hex id)."""
        with self._lock:
            return [(r, s) for r, s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[OtlpReceiver, int]]:
    """A real OTLP gRPC receiver on a free loopback port."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(1).wait()


async def wait_until(check, what: str, timeout: float = 30.0):
    """Poll `check` until it returns something true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s")
        await asyncio.sleep(0.05)


def log_lines(path: Path) -> list[dict]:
    """The JSON lines a process wrote so far."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_a_sends_spans_reach_an_otlp_receiver_and_its_log_lines_name_them(
    database_url, nats_server, internal_key, smtp_sink, tls_files, otlp_receiver, span_exporter, tmp_path
):
    # A sender runs as its own process, as in production, exporting traces with the standard OTEL_* settings
    # to an OTLP/gRPC receiver. The test publishes two transactional messages inside a span of its own: a
    # clean one, delivered to the SMTP sink, and one whose subject would inject a header, refused with an
    # error log line. The sender's CONSUMER spans arrive at the receiver in the test's trace, from service
    # "sender", with the SMTP reply of the delivery; the refusal's JSON log line carries that trace id and
    # the span id of a span the receiver got, so the line and its trace join.
    receiver, port = otlp_receiver
    stderr_path = tmp_path / "sender.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_server.url,
        "NATS_CREDS_FILE": nats_server.creds("sender"),
        "MAILBLAST_INTERNAL_KEY": internal_key.decode(),
        **default_pki().env("sender"),
        "SENDER_GRPC_BIND": "127.0.0.1:0",
        "SENDER_RETURN_PATH_DOMAIN": "bounces.example.com",
        "SENDER_UNSUBSCRIBE_URL": "https://mail.example.com/u/",
        "SENDER_RELAY_HOST": "127.0.0.1",
        "SENDER_RELAY_PORT": str(smtp_sink.port),
        "SENDER_TLS": "required",
        "SENDER_TLS_CA_FILE": str(tls_files[0]),
        "OTEL_SERVICE_NAME": "sender",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "PYTHONUNBUFFERED": "1",
    }
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.sender"], cwd=ROOT, env=env, stdout=stderr, stderr=stderr
        )
    try:

        def ready() -> bool:
            return any(e.get("event") == "service ready" for e in log_lines(stderr_path)) or process.poll() is not None

        await wait_until(ready, "ready sender")
        assert process.poll() is None, stderr_path.read_text()

        nc = await nats_server.connect()
        try:
            js = nc.jetstream()
            with trace.get_tracer("test").start_as_current_span("test publishes") as parent:
                trace_id = trace.format_trace_id(parent.get_span_context().trace_id)
                clean = make_transactional("otlp.clean", to_address="clean@example.net")
                injected = make_transactional("otlp.injected", subject="Reset\r\nBcc: evil@attacker.example")
                for message in (clean, injected):
                    await bus.publish(js, bus.transactional_subject(message.organization_id), message)
        finally:
            await nc.close()
        await smtp_sink.wait_for(1)

        def consumer_spans():
            spans = [s for r, s in receiver.of_trace(trace_id) if r.get("service.name") == "sender"]
            consumed = [s for s in spans if s.name == "send transactional"]
            return consumed if len(consumed) == 2 else None

        spans = await wait_until(consumer_spans, "sender spans at the OTLP receiver")
        assert {s.kind for s in spans} == {trace_pb2.Span.SPAN_KIND_CONSUMER}
        parents = {s.parent_span_id.hex() for s in spans}
        assert parents == {trace.format_span_id(parent.get_span_context().span_id)}
        replies = {
            a.value.int_value for s in spans for a in s.attributes if a.key == "smtp.reply_code" and a.value.int_value
        }
        assert replies == {250}

        refused = await wait_until(
            lambda: [e for e in log_lines(stderr_path) if e.get("event") == "transactional message refused"],
            "refusal log line",
        )
        (line,) = refused
        assert line["message_key"] == "otlp.injected" and line["level"] == "error"
        assert line["trace_id"] == trace_id
        assert line["span_id"] in {s.span_id.hex() for s in spans}
        # Lines written outside any span name none.
        ready = next(e for e in log_lines(stderr_path) if e.get("event") == "service ready")
        assert "trace_id" not in ready and "span_id" not in ready
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
