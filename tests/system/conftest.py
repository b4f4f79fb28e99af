"""Fixtures for whole-pipeline tests: DKIM keys and a running stack relaying to the SMTP sink."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.support.stack import DkimKeys, make_dkim_keys, start_stack


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
