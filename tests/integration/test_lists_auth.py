"""Users call lists with their API tokens, which lists checks with a real auth service."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
from cryptography.fernet import Fernet
from mailblast.v1 import auth_pb2, auth_pb2_grpc, lists_pb2

from services.auth import service as auth_service
from services.auth.config import Config as AuthConfig
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.lists import service as lists_service
from services.lists.config import Config as ListsConfig
from tests.support.lists import ListsStubs
from tests.support.nats import NatsServer


def bearer(token: str) -> list[tuple[str, str]]:
    """Metadata of a user calling with an API token."""
    return [("authorization", f"Bearer {token}")]


@pytest_asyncio.fixture
async def stubs(database_url: str, nats_server: NatsServer, internal_key: bytes, pki):
    """Auth and lists side by side (one database, their own schemas): a stub of each as a user's tool, and
    auth as `make run`, which bootstraps."""
    auth = await auth_service.start(
        AuthConfig(
            database_url=database_url,
            internal_key=internal_key,
            nats_url=nats_server.url,
            nats_creds_file=nats_server.creds("auth"),
            totp_keys=(Fernet.generate_key(),),
            grpc_tls=pki.tls("auth"),
            grpc_bind="127.0.0.1:0",
        )
    )
    lists = await lists_service.start(
        ListsConfig(
            database_url=database_url,
            nats_url=nats_server.url,
            nats_creds_file=nats_server.creds("lists"),
            internal_key=internal_key,
            grpc_tls=pki.tls("lists"),
            grpc_bind="127.0.0.1:0",
            auth_addr=f"127.0.0.1:{auth.grpc_port}",
            consume_in_background=False,
        )
    )
    auth_channel = pki.channel(auth.grpc_port, "cli")
    lists_channel = pki.channel(lists.grpc_port, "cli")
    boot_channel = pki.channel(auth.grpc_port, "dev-run")
    console_channel = pki.channel(auth.grpc_port, "gateway")
    try:
        yield (
            auth_pb2_grpc.AuthServiceStub(auth_channel),
            ListsStubs(lists_channel),
            auth_pb2_grpc.AuthServiceStub(boot_channel),
            auth_pb2_grpc.AuthServiceStub(console_channel),
        )
    finally:
        await console_channel.close()
        await boot_channel.close()
        await lists_channel.close()
        await auth_channel.close()
        await lists.stop()
        await auth.stop()


async def test_user_token_through_auth(stubs, signer: IdentitySigner):
    # The owner's token from bootstrap creates a list, adds subscribers and streams them through lists,
    # which asks auth who the token is. A viewer's token may read but not write, a send-only token may
    # not stream recipients; an unknown or revoked
    # token (revoked before lists ever saw it) is UNAUTHENTICATED.
    auth, lists, as_make_run, as_console = stubs
    boot = await as_make_run.Bootstrap(
        auth_pb2.BootstrapRequest(organization_name="Acme", admin_login="alice", admin_email="alice@example.org"),
        metadata=[(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service="dev-run"), "auth"))],
    )
    owner = bearer(boot.api_token)
    created = await lists.CreateList(lists_pb2.CreateListRequest(name="news"), metadata=owner)
    added = await lists.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=created.id,
            subscribers=[lists_pb2.SubscriberInput(email="a@example.org", name="A")],
        ),
        metadata=owner,
    )
    assert added.added == 1
    chunks = [
        c
        async for c in lists.StreamRecipients(lists_pb2.StreamRecipientsRequest(list_ids=[created.id]), metadata=owner)
    ]
    assert [r.email for c in chunks for r in c.recipients] == ["a@example.org"]

    viewer = await auth.CreateUser(
        auth_pb2.CreateUserRequest(login="vic", email="vic@example.org", role="viewer"), metadata=owner
    )
    # The viewer makes their own token, logged in to the console (which relays their identity).
    as_viewer = [
        (
            IDENTITY_HEADER,
            signer.sign(Principal(boot.organization.id, viewer.id, ("read",), "viewer", "gateway"), "auth"),
        )
    ]
    read_only = await as_console.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(name="cli", scopes=["read"]), metadata=as_viewer
    )
    got = await lists.GetList(lists_pb2.GetListRequest(list_id=created.id), metadata=bearer(read_only.secret))
    assert (got.name, got.subscriber_count, got.active_count) == ("news", 1, 1)
    with pytest.raises(grpc.aio.AioRpcError) as write:
        await lists.CreateList(lists_pb2.CreateListRequest(name="x"), metadata=bearer(read_only.secret))
    assert write.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Streaming recipients needs the read scope from a person (services relay their organisation instead).
    send_only = await auth.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(user_id=boot.user.id, name="sender", scopes=["send"]), metadata=owner
    )
    with pytest.raises(grpc.aio.AioRpcError) as no_scope:
        request = lists_pb2.StreamRecipientsRequest(list_ids=[created.id])
        [c async for c in lists.StreamRecipients(request, metadata=bearer(send_only.secret))]
    assert no_scope.value.code() == grpc.StatusCode.PERMISSION_DENIED

    doomed = await as_console.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(name="old", scopes=["read"]), metadata=as_viewer
    )
    await auth.RevokeApiToken(auth_pb2.RevokeApiTokenRequest(token_id=doomed.token.id), metadata=owner)
    for token, words in [(doomed.secret, "revoked"), (boot.api_token[:-4] + "AAAA", "unknown")]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await lists.ListLists(lists_pb2.ListListsRequest(), metadata=bearer(token))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert words in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await lists.ListLists(lists_pb2.ListListsRequest())
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
