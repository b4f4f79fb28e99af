"""Fixtures that start the real servers the tests need: PostgreSQL, NATS with JetStream, SMTP with STARTTLS, DNS."""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cli import nats_credentials
from cli.nats_credentials import Setup
from dev.embedded import start_nats, start_postgres
from services.common.identity import IdentitySigner
from tests.support.database import fresh_database, migrated_template
from tests.support.dns import DnsServer
from tests.support.mtls import TestPki, default_pki
from tests.support.nats import NatsServer
from tests.support.smtp import SmtpSink, make_self_signed
from tests.support.stack import DkimKeys, make_dkim_keys


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the session: MAILBLAST_TEST_DATABASE_URL if given, else an embedded one."""
    given = os.environ.get("MAILBLAST_TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = start_postgres(tmp_path_factory.mktemp("pg") / "data", durable=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def migrated_database(postgres_server_url: str) -> Iterator[str]:
    """The name of a database with every service's schema migrated, for whole-pipeline tests to copy
    (copying is about twice as fast as running five services' migrations in every test)."""
    with migrated_template(postgres_server_url) as name:
        yield name


@pytest.fixture(scope="session")
def nats_trust(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """One operator, account and set of service credentials for the session (as make run makes them)."""
    return nats_credentials.init(tmp_path_factory.mktemp("nats-trust"))


@pytest.fixture
def nats_server(tmp_path: Path, nats_trust: Setup) -> Iterator[NatsServer]:
    """An isolated NATS server with JetStream and authentication for each test: `.url`, `.creds(service)`."""
    server = start_nats(tmp_path / "nats", config_file=nats_trust.server_config_file)
    try:
        yield NatsServer(server.url, nats_trust)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 'localhost' and 127.0.0.1."""
    return make_self_signed(tmp_path_factory.mktemp("tls"), "localhost")


@pytest.fixture(scope="session")
def client_tls_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    """A client TLS context that trusts the test certificate."""
    return ssl.create_default_context(cafile=str(tls_files[0]))


@pytest_asyncio.fixture
async def smtp_sink(tls_files: tuple[Path, Path]):
    """A real SMTP server (aiosmtpd) offering STARTTLS, recording every message it accepts."""
    sink = SmtpSink(*tls_files)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """An authoritative DNS server on 127.0.0.1 (UDP and TCP, one free port) for the zones the test adds."""
    server = DnsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> DkimKeys:
    """DKIM keys for news.example.com and their DNS records (keys are made once: RSA-2048 takes a while)."""
    return make_dkim_keys(tmp_path_factory.mktemp("dkim"))


@pytest.fixture(scope="session")
def pki() -> TestPki:
    """The services' mutual-TLS CA: `pki.tls(name)` gives a certificate, `pki.channel(port, name)` a channel."""
    return default_pki()


@pytest.fixture
def internal_key() -> bytes:
    """The key services sign each other's identity with (printable, as it is when read from env or a file)."""
    return secrets.token_hex(32).encode()


@pytest.fixture
def signer(internal_key: bytes) -> IdentitySigner:
    """A signer for service identities."""
    return IdentitySigner(internal_key)


_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Every span finished in this process, kept in memory (the tracer provider can be set only once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    return _EXPORTER
