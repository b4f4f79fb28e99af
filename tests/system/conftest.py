"""Fixtures for whole-pipeline tests: DKIM keys and a running stack relaying to the SMTP sink."""

from __future__ import annotations

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.stack import DkimKeys, make_dkim_keys, start_stack

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Every span finished in this process, kept in memory (the tracer provider can be set only once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    return _EXPORTER


@pytest.fixture(scope="session")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> DkimKeys:
    """DKIM keys for news.example.com and their DNS records."""
    return make_dkim_keys(tmp_path_factory.mktemp("dkim"))


@pytest_asyncio.fixture
async def stack(database_url, nats_server, internal_key, smtp_sink, tls_files, dkim_keys, request):
    """Every service running in this process; options through @pytest.mark.stack(...)."""
    marker = request.node.get_closest_marker("stack")
    options = dict(marker.kwargs) if marker else {}
    running = await start_stack(
        database_url, nats_server, internal_key, smtp_sink.port, tls_files[0], dkim_keys, **options
    )
    try:
        yield running
    finally:
        await running.stop()
