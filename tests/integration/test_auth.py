"""The auth service on a real PostgreSQL, called over real gRPC: bootstrap, tokens, users, organisations."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import psycopg
import pytest
import pytest_asyncio
from cryptography.fernet import Fernet
from mailblast.v1 import auth_pb2, auth_pb2_grpc

from services.auth.config import Config
from services.auth.service import start
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from tests.support.nats import NatsServer


def as_service(signer: IdentitySigner, organization_id: int = 0) -> list[tuple[str, str]]:
    """Metadata of the console calling as itself (the channel presents its certificate)."""
    return [(IDENTITY_HEADER, signer.sign(Principal(organization_id=organization_id, service="gateway"), "auth"))]


def as_admin_of(signer: IdentitySigner, organization_id: int) -> list[tuple[str, str]]:
    """Metadata of an admin user of an organisation, relayed by the console as a signed identity."""
    principal = Principal(organization_id=organization_id, user_id=0, scopes=("admin",), role="admin")
    return [(IDENTITY_HEADER, signer.sign(principal.acting_as("gateway"), "auth"))]


def as_user(signer: IdentitySigner, user: auth_pb2.User) -> list[tuple[str, str]]:
    """Metadata of the console relaying a logged-in user, with the scopes of their role."""
    scopes = {"viewer": ("read",), "editor": ("read", "send")}.get(user.role, ("read", "send", "admin"))
    principal = Principal(user.organization_id, user.id, scopes, user.role, service="gateway")
    return [(IDENTITY_HEADER, signer.sign(principal, "auth"))]


def bearer(token: str) -> list[tuple[str, str]]:
    """Metadata of a user calling with an API token."""
    return [("authorization", f"Bearer {token}")]


@pytest_asyncio.fixture
async def auth(database_url: str, nats_server: NatsServer, internal_key: bytes, pki):
    """A started auth service and a stub connected to it as the console."""
    running = await start(
        Config(
            database_url=database_url,
            internal_key=internal_key,
            nats_url=nats_server.url,
            nats_creds_file=nats_server.creds("auth"),
            totp_keys=(Fernet.generate_key(),),
            grpc_tls=pki.tls("auth"),
            grpc_bind="127.0.0.1:0",
        )
    )
    channel = pki.channel(running.grpc_port, "gateway")
    try:
        yield auth_pb2_grpc.AuthServiceStub(channel)
    finally:
        await channel.close()
        await running.stop()


async def bootstrap(stub: auth_pb2_grpc.AuthServiceStub, signer: IdentitySigner) -> auth_pb2.BootstrapResponse:
    """Bootstrap the installation as a service would."""
    return await stub.Bootstrap(
        auth_pb2.BootstrapRequest(organization_name="Acme", admin_login="alice", admin_email="Alice@Example.COM"),
        metadata=as_service(signer),
    )


async def test_bootstrap_once_then_refused(auth, signer: IdentitySigner, database_url: str):
    # Three bootstraps racing on an empty installation: exactly one creates the organisation, owner and
    # an all-scopes token; the others, and any later one, are refused as already bootstrapped. A user
    # cannot bootstrap at all.
    results = await asyncio.gather(*(bootstrap(auth, signer) for _ in range(3)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, auth_pb2.BootstrapResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1 and len(refused) == 2
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in refused)
    assert all("already bootstrapped" in e.details() for e in refused)
    reply = ok[0]
    assert reply.organization.name == "Acme"
    assert reply.user.role == "owner" and reply.user.email == "Alice@example.com"
    assert reply.api_token.startswith("mb_")

    with pytest.raises(grpc.aio.AioRpcError) as again:
        await bootstrap(auth, signer)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(grpc.aio.AioRpcError) as by_user:
        await auth.Bootstrap(auth_pb2.BootstrapRequest(), metadata=bearer(reply.api_token))
    assert by_user.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Only the hash of the secret is stored.
    secret = reply.api_token.split("_", 2)[2]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT prefix, secret_hash, scopes FROM auth.api_tokens").fetchall()
        orgs = conn.execute("SELECT count(*) FROM auth.organizations").fetchone()[0]
    assert orgs == 1
    assert rows == [
        (reply.api_token.split("_")[1], hashlib.sha256(secret.encode()).digest(), ["read", "send", "admin"])
    ]


async def test_bootstrap_refuses_a_weak_owner_password_saying_why(auth, signer: IdentitySigner, database_url: str):
    # The first owner's console password follows the same rules as every other: one built on the
    # organisation's name is refused with zxcvbn's reasons, and nothing is created; a strong one works.
    request = auth_pb2.BootstrapRequest(
        organization_name="Sakura Trading", admin_login="alice", admin_email="alice@example.org",
        admin_password="SakuraTrading",
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as weak:
        await auth.Bootstrap(request, metadata=as_service(signer))
    assert weak.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "too easy to guess" in weak.value.details() and "organisation" in weak.value.details()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM auth.organizations").fetchone()[0] == 0
    request.admin_password = "quiet-maple-window-53"
    assert (await auth.Bootstrap(request, metadata=as_service(signer))).user.has_password


async def test_authenticate_then_revoke(auth, signer: IdentitySigner):
    # A service turns the bootstrap token into its principal; once the token is revoked the same
    # question is answered UNAUTHENTICATED, as are malformed and unknown tokens. Users may not ask.
    boot = await bootstrap(auth, signer)
    principal = await auth.Authenticate(auth_pb2.AuthenticateRequest(token=boot.api_token), metadata=as_service(signer))
    assert principal.organization_id == boot.organization.id
    assert principal.user_id == boot.user.id
    assert sorted(principal.scopes) == ["admin", "read", "send"]
    assert principal.role == "owner"

    # The token works against auth itself, and its use is recorded (once a minute at most).
    tokens = (await auth.ListApiTokens(auth_pb2.ListApiTokensRequest(), metadata=bearer(boot.api_token))).tokens
    [token] = tokens
    assert token.HasField("last_used_at") and not token.HasField("revoked_at")
    await auth.Authenticate(auth_pb2.AuthenticateRequest(token=boot.api_token), metadata=as_service(signer))
    [again] = (await auth.ListApiTokens(auth_pb2.ListApiTokensRequest(), metadata=bearer(boot.api_token))).tokens
    assert again.last_used_at == token.last_used_at

    with pytest.raises(grpc.aio.AioRpcError) as not_service:
        await auth.Authenticate(auth_pb2.AuthenticateRequest(token=boot.api_token), metadata=bearer(boot.api_token))
    assert not_service.value.code() == grpc.StatusCode.PERMISSION_DENIED

    revoked = await auth.RevokeApiToken(
        auth_pb2.RevokeApiTokenRequest(token_id=token.id), metadata=bearer(boot.api_token)
    )
    assert revoked.HasField("revoked_at")
    for bad, words in [
        (boot.api_token, "revoked"),
        ("not-a-token", "malformed"),
        (boot.api_token[:-4] + "AAAA", "unknown"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth.Authenticate(auth_pb2.AuthenticateRequest(token=bad), metadata=as_service(signer))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert words in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as with_revoked:
        await auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(boot.api_token))
    assert with_revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_users_and_tokens_are_validated(auth, signer: IdentitySigner):
    # An admin adds users; a user issues their own tokens; bad logins, addresses, roles and scopes are
    # refused naming the bad value; a viewer's token grants read only and cannot administer.
    boot = await bootstrap(auth, signer)
    admin = bearer(boot.api_token)
    bob = await auth.CreateUser(
        auth_pb2.CreateUserRequest(login="bob", email="bob@example.org", role="viewer"), metadata=admin
    )
    assert bob.organization_id == boot.organization.id and bob.role == "viewer"

    bad_users = [
        (auth_pb2.CreateUserRequest(login="eve\r\nx", email="e@example.org", role="viewer"), "control"),
        (auth_pb2.CreateUserRequest(login="", email="e@example.org", role="viewer"), "empty"),
        (auth_pb2.CreateUserRequest(login="x" * 65, email="e@example.org", role="viewer"), "64"),
        (auth_pb2.CreateUserRequest(login="eve", email="eve@", role="viewer"), "'eve@' is not an email"),
        (auth_pb2.CreateUserRequest(login="eve", email="e@example.org", role="god"), "'god'"),
    ]
    for request, words in bad_users:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth.CreateUser(request, metadata=admin)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert words in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await auth.CreateUser(
            auth_pb2.CreateUserRequest(login="bob", email="b2@example.org", role="editor"), metadata=admin
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS

    for scopes, words in [(["read", "delete"], "'delete'"), (["admin"], "'admin'"), ([], "at least one")]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth.CreateApiToken(
                auth_pb2.CreateApiTokenRequest(name="t", scopes=scopes), metadata=as_user(signer, bob)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in refused.value.details()

    issued = await auth.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(name="reports", scopes=["read"]), metadata=as_user(signer, bob)
    )
    assert issued.secret.startswith(f"mb_{issued.token.prefix}_")
    principal = await auth.Authenticate(auth_pb2.AuthenticateRequest(token=issued.secret), metadata=as_service(signer))
    assert (principal.user_id, list(principal.scopes), principal.role) == (bob.id, ["read"], "viewer")
    with pytest.raises(grpc.aio.AioRpcError) as viewer:
        await auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(issued.secret))
    assert viewer.value.code() == grpc.StatusCode.PERMISSION_DENIED

    users = (await auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=admin)).users
    assert [u.login for u in users] == ["alice", "bob"]
    listed = (await auth.ListApiTokens(auth_pb2.ListApiTokensRequest(), metadata=admin)).tokens
    assert [t.name for t in listed] == ["bootstrap", "reports"]
    assert issued.secret not in str(listed)


async def test_other_organisation_sees_nothing(auth, signer: IdentitySigner, database_url: str):
    # An admin of a second organisation can neither list, issue tokens for, nor revoke tokens of the
    # first organisation: its users and tokens are NOT_FOUND (or, for a token, refused as not its own),
    # and the first organisation is untouched.
    boot = await bootstrap(auth, signer)
    with psycopg.connect(database_url) as conn:
        other = conn.execute("INSERT INTO auth.organizations (name) VALUES ('Other') RETURNING id").fetchone()[0]
    intruder = as_admin_of(signer, other)
    [first_token] = (await auth.ListApiTokens(auth_pb2.ListApiTokensRequest(), metadata=bearer(boot.api_token))).tokens

    assert list((await auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=intruder)).users) == []
    assert list((await auth.ListApiTokens(auth_pb2.ListApiTokensRequest(), metadata=intruder)).tokens) == []
    with pytest.raises(grpc.aio.AioRpcError) as issue:
        await auth.CreateApiToken(
            auth_pb2.CreateApiTokenRequest(user_id=boot.user.id, name="steal", scopes=["read"]), metadata=intruder
        )
    assert issue.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as revoke:
        await auth.RevokeApiToken(auth_pb2.RevokeApiTokenRequest(token_id=first_token.id), metadata=intruder)
    assert revoke.value.code() == grpc.StatusCode.NOT_FOUND

    # A user the intruder creates lands in its own organisation.
    own = await auth.CreateUser(
        auth_pb2.CreateUserRequest(login="mallory", email="m@example.net", role="editor"), metadata=intruder
    )
    assert own.organization_id == other
    users = (await auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(boot.api_token))).users
    assert [u.login for u in users] == ["alice"]
    still = await auth.Authenticate(auth_pb2.AuthenticateRequest(token=boot.api_token), metadata=as_service(signer))
    assert still.organization_id == boot.organization.id
