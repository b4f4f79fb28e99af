"""Fixtures for whole-pipeline tests: a running stack relaying to the SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.console import Console, start_console
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


@pytest_asyncio.fixture
async def make_console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path: Path):
    """Start the console on real services, with start_console's options (auth settings, clock) given per test."""
    started: list[Console] = []

    async def make(**options) -> Console:
        console = await start_console(
            database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path / "outbox", **options
        )
        started.append(console)
        return console

    yield make
    for console in started:
        await console.stop()
