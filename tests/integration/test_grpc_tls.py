"""Mutual TLS between the services: who may connect, who may call, and what an eavesdropper on the wire sees."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
import pytest_asyncio
from cryptography.fernet import Fernet
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mailblast.v1 import auth_pb2, auth_pb2_grpc, lists_pb2

from dev.embedded import free_port
from services.auth import service as auth_service
from services.auth.config import Config as AuthConfig
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.common.rpc import ALLOWED_CALLERS, ServiceIdentity
from services.common.settings import ConfigError
from services.lists import service as lists_service
from services.lists.config import Config as ListsConfig
from tests.support.lists import ListsStubs
from tests.support.mtls import TestPki
from tests.support.nats import NatsServer

PASSWORD = "correct-horse-battery-staple-42"


@pytest_asyncio.fixture
async def auth(database_url: str, nats_server: NatsServer, internal_key: bytes, pki: TestPki, signer: IdentitySigner):
    """auth with its plaintext health listener, bootstrapped with owner 'alice' (as `make run` does)."""
    health_port = free_port()
    config = AuthConfig(
        database_url=database_url, internal_key=internal_key, nats_url=nats_server.url,
        totp_keys=(Fernet.generate_key(),), grpc_tls=pki.tls("auth"),
        grpc_bind="127.0.0.1:0", health_bind=f"127.0.0.1:{health_port}", nats_creds_file=nats_server.creds("auth"),
    )  # fmt: skip
    running = await auth_service.start(config)
    async with pki.channel(running.grpc_port, "dev-run") as channel:
        await auth_pb2_grpc.AuthServiceStub(channel).Bootstrap(
            auth_pb2.BootstrapRequest(
                organization_name="Acme", admin_login="alice", admin_email="alice@example.org", admin_password=PASSWORD
            ),
            metadata=[(IDENTITY_HEADER, signer.sign(Principal(0, service="dev-run"), "auth"))],
        )
    running.health_port = health_port
    try:
        yield running
    finally:
        await running.stop()


def as_console(signer: IdentitySigner, audience: str = "auth", service: str = "gateway") -> list[tuple[str, str]]:
    """The console calling as itself (its assertion for `audience`)."""
    return [(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service=service), audience))]


def login(password: str = PASSWORD) -> auth_pb2.LoginRequest:
    """alice's console login."""
    return auth_pb2.LoginRequest(login="alice", password=password, source_ip="203.0.113.5", user_agent="pytest")


async def refusal(call) -> grpc.aio.AioRpcError:
    """The error a call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


async def test_the_console_logs_in_over_mutual_tls(auth, signer: IdentitySigner, pki: TestPki):
    # The console, with its certificate and an assertion meant for auth, logs alice in.
    async with pki.channel(auth.grpc_port, "gateway") as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).Login(login(), metadata=as_console(signer), timeout=10)
    assert reply.status == auth_pb2.LOGIN_STATUS_OK


async def test_connections_without_a_certificate_of_the_ca_are_refused(
    auth, signer: IdentitySigner, pki: TestPki, tmp_path
):
    # A plaintext client, a TLS client presenting no certificate, and one whose certificate comes from
    # another CA (even naming the console) never reach a handler: the connection fails in the handshake.
    ca = pki.tls("gateway").read()[0]
    rogue = TestPki(tmp_path / "rogue").tls("gateway")
    rogue_ca, rogue_chain, rogue_key = rogue.read()
    clients = {
        "plaintext": grpc.aio.insecure_channel(f"127.0.0.1:{auth.grpc_port}"),
        "no certificate": grpc.aio.secure_channel(
            f"127.0.0.1:{auth.grpc_port}", grpc.ssl_channel_credentials(root_certificates=ca)
        ),
        "another CA": grpc.aio.secure_channel(
            f"127.0.0.1:{auth.grpc_port}",
            grpc.ssl_channel_credentials(root_certificates=ca, private_key=rogue_key, certificate_chain=rogue_chain),
        ),
    }
    for name, channel in clients.items():
        async with channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            error = await refusal(stub.Login(login(), metadata=as_console(signer), timeout=10))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, name
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert (await refusal(health)).code() == grpc.StatusCode.UNAVAILABLE, name
    assert rogue_ca != ca


async def test_a_service_not_on_the_allow_list_is_refused_before_any_handler_runs(
    auth, signer: IdentitySigner, pki: TestPki, database_url: str
):
    # The sender holds a valid certificate of the installation but never calls auth: its calls are
    # PERMISSION_DENIED before the handler runs (a wrong password it sends counts as no failed login).
    assert "sender" not in ALLOWED_CALLERS["auth"]
    async with pki.channel(auth.grpc_port, "sender") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for attempt in range(3):
            request = login(f"wrong-{attempt}")
            error = await refusal(stub.Login(request, metadata=as_console(signer, service="sender"), timeout=10))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details() == "the certificate of sender may not call auth"
        # Any certificate of the CA may still ask whether auth is up.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with psycopg.connect(database_url) as conn:
        failures = conn.execute("SELECT failures FROM auth.login_lockouts WHERE login = 'alice'").fetchall()
    assert failures == []


async def test_an_assertion_is_good_only_for_its_audience_and_from_its_certificate(
    auth, database_url: str, nats_server: NatsServer, internal_key: bytes, signer: IdentitySigner, pki: TestPki
):
    # An assertion the console made for auth, replayed to lists, is refused there; one claiming to come
    # from the console but sent with the campaigns certificate is refused by auth.
    lists = await lists_service.start(
        ListsConfig(
            database_url=database_url,
            nats_url=nats_server.url,
            internal_key=internal_key,
            grpc_tls=pki.tls("lists"),
            grpc_bind="127.0.0.1:0",
            nats_creds_file=nats_server.creds("lists"),
        )
    )
    try:
        user = Principal(
            organization_id=1, user_id=1, scopes=("read", "send", "admin"), role="owner", service="gateway"
        )
        for_auth = [(IDENTITY_HEADER, signer.sign(user, "auth"))]
        async with pki.channel(lists.grpc_port, "gateway") as channel:
            stub = ListsStubs(channel)
            error = await refusal(stub.ListLists(lists_pb2.ListListsRequest(), metadata=for_auth, timeout=10))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error.details() == "service identity is meant for auth, not lists"
            # The same user's assertion made for lists works.
            mine = [(IDENTITY_HEADER, signer.sign(user, "lists"))]
            assert (await stub.ListLists(lists_pb2.ListListsRequest(), metadata=mine, timeout=10)).lists == []
    finally:
        await lists.stop()

    async with pki.channel(auth.grpc_port, "campaigns") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        error = await refusal(stub.Login(login(), metadata=as_console(signer), timeout=10))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "the service identity was issued by gateway but the certificate is of campaigns"


async def test_kubernetes_probes_reach_health_in_plaintext_and_nothing_else(auth, signer: IdentitySigner):
    # The plaintext listener on MAILBLAST_HEALTH_BIND answers grpc.health.v1 (what a native gRPC probe
    # asks) and serves no API: a Login sent there finds no such method.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mailblast.v1.AuthService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        error = await refusal(stub.Login(login(), metadata=as_console(signer), timeout=10))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED


class Tap:
    """A TCP proxy in front of a server that keeps every byte the client sent through it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        """Listen on a free port; return it."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, keep: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if keep:
                        self.sent.extend(data)
                    sink.write(data)
                    await sink.drain()
            sink.close()

        for task in (
            asyncio.create_task(pump(reader, up_writer, keep=True)),
            asyncio.create_task(pump(up_reader, writer, keep=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Close the listener and the relayed connections."""
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def tapped(port: int) -> AsyncIterator[tuple[Tap, int]]:
    """A Tap in front of `port` and the port to connect to instead."""
    tap = Tap(port)
    listening = await tap.start()
    try:
        yield tap, listening
    finally:
        await tap.stop()


class _PlainAuth(auth_pb2_grpc.AuthServiceServicer):
    async def Login(self, request, context):
        return auth_pb2.LoginResponse()


async def test_a_login_password_is_not_readable_on_the_wire(auth, signer: IdentitySigner, pki: TestPki):
    # Someone recording the loopback traffic between the console and auth sees neither alice's password
    # nor her login name. The control: the same capture in front of a plaintext gRPC server shows both.
    async with tapped(auth.grpc_port) as (tap, port), pki.channel(port, "gateway") as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).Login(login(), metadata=as_console(signer), timeout=10)
    assert reply.status == auth_pb2.LOGIN_STATUS_OK
    assert len(tap.sent) > 500, "the capture saw the handshake and the call"
    assert PASSWORD.encode() not in tap.sent
    assert b"alice" not in tap.sent

    plain = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(_PlainAuth(), plain)
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()
    try:
        async with tapped(plain_port) as (control, port), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await auth_pb2_grpc.AuthServiceStub(channel).Login(login(), timeout=10)
        assert PASSWORD.encode() in control.sent
    finally:
        await plain.stop(None)


def test_a_service_refuses_to_start_with_another_services_certificate(pki: TestPki):
    # Started with the lists certificate, auth stops at start-up naming the setting and both identities,
    # rather than failing every call later.
    with pytest.raises(ConfigError, match="is the certificate of 'lists', not of 'auth'"):
        ServiceIdentity("auth", pki.tls("lists"), b"k" * 32)
