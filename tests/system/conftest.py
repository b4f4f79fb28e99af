"""Fixtures for whole-pipeline tests: a running stack relaying to the SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_asyncio

from tests.support.database import fresh_database
from tests.support.stack import start_stack


@pytest.fixture
def database_url(postgres_server_url: str, migrated_database: str) -> Iterator[str]:
    """A fresh database for one test: a copy of one the services have migrated (they all start anyway)."""
    with fresh_database(postgres_server_url, template=migrated_database) as url:
        yield url


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
