"""OpenTelemetry set-up from the standard OTEL_* variables, and W3C context in NATS headers."""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


def setup_tracing(service_name: str) -> None:
    """Install a tracer provider unless one is installed already (tests install their own).

    The exporter follows OTEL_TRACES_EXPORTER (otlp, console or none); with it unset, OTLP is used
    when OTEL_EXPORTER_OTLP_ENDPOINT is set and nothing is exported otherwise.
    """
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if not exporter_name:
        exporter_name = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    names = {n.strip() for n in exporter_name.split(",")} - {"", "none"}
    if not names:
        # Nothing would be exported: keep the API's no-op provider, whose spans cost next to nothing
        # (an SDK provider would still build, time and drop every span). Context still propagates.
        return
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    for name in sorted(names):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def shutdown_tracing() -> None:
    """Flush spans still buffered."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Return message headers carrying the current trace context (traceparent, tracestate)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """Return the trace context carried by message headers (empty context when there is none)."""
    return propagate.extract(dict(headers or {}))
