"""The console served over HTTPS on a free port on real services, and Chromium browsers to use it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Page, async_playwright

from dev.embedded import free_port
from services.gateway.server import ConsoleServer
from tests.support.browser import People
from tests.support.console import Console, start_console
from tests.support.database import fresh_database


@pytest.fixture
def database_url(postgres_server_url: str, migrated_database: str) -> Iterator[str]:
    """A fresh database for one test: a copy of one the services have migrated (they all start anyway)."""
    with fresh_database(postgres_server_url, template=migrated_database) as url:
        yield url


@pytest_asyncio.fixture
async def make_site(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path: Path):
    """Start the services and serve the console over HTTPS on a free port; returns (console, base URL).

    The mailed links (reset, confirmation, unsubscribe) point at that address, so a browser can follow them.
    """
    started: list[tuple[Console, ConsoleServer]] = []

    async def make(**auth_overrides) -> tuple[Console, str]:
        port = free_port()
        base = f"https://localhost:{port}"
        console = await start_console(
            database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path / "outbox", public_url=base,
            **auth_overrides,
        )  # fmt: skip
        server = ConsoleServer(console.app, "127.0.0.1", port, tls_files[0], tls_files[1])
        server.start()
        started.append((console, server))
        return console, base

    yield make
    for console, server in started:
        await asyncio.to_thread(server.stop)
        await console.stop()


@pytest_asyncio.fixture
async def people(tmp_path: Path) -> AsyncIterator[People]:
    """Opens a Chromium for each person in the test; all are closed at the end."""
    async with async_playwright() as playwright:
        opened = People(playwright, tmp_path)
        try:
            yield opened
        finally:
            await opened.close()


@pytest_asyncio.fixture
async def page(people: People) -> Page:
    """The first person's page (an English browser)."""
    return await people.open()


@pytest_asyncio.fixture
async def stranger(people: People, page: Page) -> Page:
    """Someone else's browser (a profile of its own), on the same address as the first person's."""
    return await people.open()
