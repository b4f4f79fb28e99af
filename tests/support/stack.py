"""The whole pipeline in one test: auth, lists, campaigns, bounce and senders on real servers, gRPC on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailblast.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    bounce_pb2_grpc,
    campaigns_pb2,
    campaigns_pb2_grpc,
    lists_pb2,
)
from nats.js import JetStreamContext

from dev.embedded import free_port
from services.auth import service as auth_service
from services.auth.config import Config as AuthConfig
from services.bounce import service as bounce_service
from services.bounce.config import Config as BounceConfig
from services.campaigns import service as campaigns_service
from services.campaigns.config import Config as CampaignsConfig
from services.common.clock import Clock
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.lists import service as lists_service
from services.lists.config import Config as ListsConfig
from services.sender import service as sender_service
from services.sender.config import Config as SenderConfig
from tests.support.dns import DnsServer
from tests.support.lists import ListsStubs
from tests.support.mtls import default_pki
from tests.support.nats import ADMIN, NatsServer

DKIM_DOMAIN = "news.example.com"
RETURN_PATH_DOMAIN = "bounces.example.com"
# The Fernet key campaigns seals the organisations' DKIM keys with, and the senders open them with.
DKIM_SEALING_KEY = Fernet.generate_key()


@dataclass(frozen=True)
class DkimKeys:
    """Key files for both DKIM algorithms, and the TXT records a receiver would look up."""

    rsa_key: Path
    ed25519_key: Path
    records: dict[bytes, bytes]

    def publish(self, dns_server: DnsServer) -> None:
        """Publish the TXT records on the test's DNS server, as the domain's owner would."""
        dns_server.add_zone(DKIM_DOMAIN)
        for name, value in self.records.items():
            dns_server.add_txt(name, value)


def make_dkim_keys(directory: Path) -> DkimKeys:
    """An RSA-2048 and an ed25519 key, with their DNS records for selectors mb1 / mb1ed."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pkcs8 = serialization.PrivateFormat.PKCS8
    rsa_path, ed_path = directory / "dkim-rsa.pem", directory / "dkim-ed25519.pem"
    rsa_path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    ed_path.write_bytes(ed_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    rsa_pub = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_pub = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    records = {
        f"mb1._domainkey.{DKIM_DOMAIN}.".encode(): b"v=DKIM1; k=rsa; p=" + base64.b64encode(rsa_pub),
        f"mb1ed._domainkey.{DKIM_DOMAIN}.".encode(): b"v=DKIM1; k=ed25519; p=" + base64.b64encode(ed_pub),
    }
    return DkimKeys(rsa_path, ed_path, records)


@dataclass
class Stack:
    """Running services and user-side stubs carrying an admin token."""

    auth: auth_service.Running
    lists: lists_service.Running
    campaigns: campaigns_service.Running
    bounce: bounce_service.Running | None
    senders: list[sender_service.Running]
    token: str
    signer: IdentitySigner
    organization_id: int
    sender_config: SenderConfig
    bounce_config: BounceConfig | None = None
    nats: NatsServer | None = None
    lists_config: ListsConfig | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    # Replicas beyond the first of campaigns and bounce (start_stack(campaigns=2, bounces=2)), as Kubernetes runs them.
    more_campaigns: list[campaigns_service.Running] = field(default_factory=list)
    more_bounces: list[bounce_service.Running] = field(default_factory=list)
    campaigns_config: CampaignsConfig | None = None
    # The bootstrap admin's user id.
    owner_id: int = 0
    auth_config: AuthConfig | None = None
    # Keyword arguments of campaigns' start (start_stack(campaigns_options={"clock": MovableClock()})).
    campaigns_options: dict = field(default_factory=dict)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        """Call metadata of the bootstrap admin."""
        return [("authorization", f"Bearer {self.token}")]

    def channel(self, port: int, identity: str = "cli") -> grpc.aio.Channel:
        """A mutual-TLS channel to one of the services, presenting the certificate of `identity`."""
        channel = default_pki().channel(port, identity)
        self.channels.append(channel)
        return channel

    @property
    def lists_stub(self) -> ListsStubs:
        """Lists, as a user."""
        return ListsStubs(self.channel(self.lists.grpc_port))

    @property
    def campaigns_stub(self) -> campaigns_pb2_grpc.CampaignsServiceStub:
        """Campaigns, as a user."""
        return campaigns_pb2_grpc.CampaignsServiceStub(self.channel(self.campaigns.grpc_port))

    @property
    def bounce_stub(self) -> bounce_pb2_grpc.BounceServiceStub:
        """Bounce, as a user."""
        return bounce_pb2_grpc.BounceServiceStub(self.channel(self.bounce.grpc_port))

    async def create_list(self, emails: list[str], name: str = "list", fields: dict | None = None) -> int:
        """A list with these subscribers (name derived from the address, plus fields)."""
        import json

        lists = self.lists_stub
        created = await lists.CreateList(lists_pb2.CreateListRequest(name=name), metadata=self.metadata)
        for start in range(0, len(emails), 5000):
            rows = [
                lists_pb2.SubscriberInput(
                    email=e,
                    name=f"名前 {e.split('@')[0]}",
                    attributes_json=json.dumps(fields or {}, ensure_ascii=False),
                )
                for e in emails[start : start + 5000]
            ]
            reply = await lists.AddSubscribers(
                lists_pb2.AddSubscribersRequest(list_id=created.id, subscribers=rows), metadata=self.metadata
            )
            assert not reply.errors, reply.errors
        return created.id

    async def send_campaign(
        self, list_ids: list[int], via: campaigns_service.Running | None = None, **content
    ) -> campaigns_pb2.Campaign:
        """Create and send a campaign (through the replica `via`, by default the first); returns it as sent."""
        stub = campaigns_pb2_grpc.CampaignsServiceStub(self.channel(via.grpc_port)) if via else self.campaigns_stub
        request = campaigns_pb2.CreateCampaignRequest(
            name=content.pop("name", "test campaign"),
            list_ids=list_ids,
            from_name=content.pop("from_name", "ニュース"),
            from_address=content.pop("from_address", f"news@{DKIM_DOMAIN}"),
            subject=content.pop("subject", "{{ name }}様へのお知らせ"),
            html_body=content.pop("html_body", "<p>{{ name }}様 ({{ email }})</p>"),
            text_body=content.pop("text_body", "{{ name }}様 ({{ email }})"),
            **content,
        )
        created = await stub.CreateCampaign(request, metadata=self.metadata)
        return await stub.SendCampaign(
            campaigns_pb2.SendCampaignRequest(campaign_id=created.id), metadata=self.metadata
        )

    async def wait_campaign(self, campaign_id: int, done: callable, timeout: float = 120.0) -> campaigns_pb2.Campaign:
        """Poll the campaign until done(campaign) holds, or fail with its last counters."""
        stub = self.campaigns_stub
        deadline = time.monotonic() + timeout
        while True:
            campaign = await stub.GetCampaign(
                campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id), metadata=self.metadata
            )
            if done(campaign):
                return campaign
            if time.monotonic() > deadline:
                raise TimeoutError(f"campaign {campaign_id} not done within {timeout}s: {campaign.counters}")
            await asyncio.sleep(0.1)

    async def restart_lists(self) -> None:
        """Start the lists service again (after `await stack.lists.stop()`) on the port and settings it had."""
        assert self.lists_config is not None
        port = self.lists.grpc_port
        self.lists = await lists_service.start(dataclasses.replace(self.lists_config, grpc_bind=f"127.0.0.1:{port}"))

    async def restart_bounce(self) -> None:
        """Start the bounce service again (after `await stack.bounce.stop()`) with the settings it had."""
        assert self.bounce_config is not None
        self.bounce = await bounce_service.start(self.bounce_config)

    async def restart_campaigns(self, **options) -> None:
        """Stop every campaigns replica, then start as many again at once on their ports (both pods evicted).

        `options` replace some of campaigns_options for the new processes (and those after them).
        """
        assert self.campaigns_config is not None
        replicas = [self.campaigns, *self.more_campaigns]
        for running in replicas:
            await running.stop()
        configs = [dataclasses.replace(self.campaigns_config, grpc_bind=f"127.0.0.1:{r.grpc_port}") for r in replicas]
        self.campaigns_options = {**self.campaigns_options, **options}
        self.campaigns, *self.more_campaigns = await asyncio.gather(
            *(campaigns_service.start(c, **self.campaigns_options) for c in configs)
        )

    @contextlib.asynccontextmanager
    async def jetstream(self, name: str = ADMIN) -> AsyncIterator[JetStreamContext]:
        """A NATS connection of the test's own (with the named credential), to publish events or look at consumers."""
        assert self.nats is not None
        nc = await self.nats.connect(name)
        try:
            yield nc.jetstream()
        finally:
            await nc.close()

    async def stop(self) -> None:
        """Stop everything at once: no service waits on another while it stops, and each takes up to a
        second (its runners finish the fetch they are in), which in turn would add up in every test."""
        await asyncio.gather(*(channel.close() for channel in self.channels))
        services = (*self.more_campaigns, *self.more_bounces, self.campaigns, self.bounce, self.lists, self.auth)
        stops = [*(sender.stop(grace=5.0) for sender in self.senders), *(s.stop() for s in services if s is not None)]
        failures = [r for r in await asyncio.gather(*stops, return_exceptions=True) if isinstance(r, BaseException)]
        if failures:
            raise failures[0]


@dataclass(frozen=True)
class Bootstrap:
    """The first organisation and its admin, as `make run` bootstraps them (no password: an API token only)."""

    organization_name: str = "Test KK"
    admin_login: str = "admin"
    admin_email: str = "admin@example.com"
    admin_password: str = ""


def sender_config(
    database_url: str, nats: NatsServer, internal_key: bytes, sink_port: int, cert: Path, dkim: DkimKeys, **overrides
) -> SenderConfig:
    """A sender relaying to the test sink over mandatory STARTTLS, signing with both algorithms."""
    config = SenderConfig(
        database_url=database_url,
        nats_url=nats.url,
        nats_creds_file=nats.creds("sender"),
        internal_key=internal_key,
        return_path_domain=RETURN_PATH_DOMAIN,
        unsubscribe_url="https://mail.example.com/u/",
        grpc_tls=default_pki().tls("sender"),
        grpc_bind="127.0.0.1:0",
        relay_host="127.0.0.1",
        relay_port=sink_port,
        tls="required",
        tls_ca_file=str(cert),
        dkim_domain=DKIM_DOMAIN,
        dkim_selector="mb1",
        dkim_key_file=str(dkim.rsa_key),
        dkim_ed25519_selector="mb1ed",
        dkim_ed25519_key_file=str(dkim.ed25519_key),
        dkim_sealing_keys=(DKIM_SEALING_KEY,),
        concurrency=32,
        retry_base_seconds=0.2,
        retry_max_seconds=1.0,
        smtp_timeout_seconds=10.0,
        pause_recheck_seconds=0.5,
    )
    return dataclasses.replace(config, **overrides)


async def start_stack(
    database_url: str,
    nats: NatsServer,
    internal_key: bytes,
    sink_port: int,
    cert: Path,
    dkim: DkimKeys,
    *,
    senders: int = 1,
    hard_bounce_threshold: int = 3,
    sender_overrides: dict | None = None,
    campaigns: int = 1,
    bounces: int = 1,
    campaigns_overrides: dict | None = None,
    auth_overrides: dict | None = None,
    lists_overrides: dict | None = None,
    clock: Clock | None = None,
    bootstrap: Bootstrap = Bootstrap(),
    metrics: bool = False,
    campaigns_options: dict | None = None,
) -> Stack:
    """Start every service in this process and bootstrap an organisation with an admin token.

    campaigns, bounces: how many replicas of those services run side by side (each bounce its own SMTP
    port; bounces=0 for none). Auth's lockouts and sessions and lists' mail limits go by `clock` (tests
    move it; the system's by default). metrics: every service serves /metrics on a port of its own
    (`running.metrics_port`). campaigns_options: keyword arguments of campaigns' start, e.g. the clock
    schedules go by (a MovableClock) and run_scheduler=False, so only the test's scheduler.run_once() starts them.
    """
    signer = IdentitySigner(internal_key)
    pki = default_pki()
    metrics_bind = "127.0.0.1:0" if metrics else ""
    auth_config = AuthConfig(
        database_url=database_url, internal_key=internal_key, nats_url=nats.url, totp_keys=(Fernet.generate_key(),),
        grpc_tls=pki.tls("auth"), grpc_bind="127.0.0.1:0", nats_creds_file=nats.creds("auth"),
        metrics_bind=metrics_bind,
    )  # fmt: skip
    auth = await auth_service.start(dataclasses.replace(auth_config, **(auth_overrides or {})), clock=clock)
    auth_addr = f"127.0.0.1:{auth.grpc_port}"
    lists_config = ListsConfig(
        database_url=database_url, nats_url=nats.url, internal_key=internal_key, grpc_tls=pki.tls("lists"),
        grpc_bind="127.0.0.1:0", auth_addr=auth_addr, hard_bounce_threshold=hard_bounce_threshold,
        nats_creds_file=nats.creds("lists"), metrics_bind=metrics_bind,
    )  # fmt: skip
    lists_config = dataclasses.replace(lists_config, **(lists_overrides or {}))
    lists = await lists_service.start(lists_config, clock=clock)
    campaigns_config = CampaignsConfig(
        database_url=database_url, nats_url=nats.url, internal_key=internal_key,
        lists_addr=f"127.0.0.1:{lists.grpc_port}", grpc_tls=pki.tls("campaigns"), auth_addr=auth_addr,
        grpc_bind="127.0.0.1:0",
        nats_creds_file=nats.creds("campaigns"), metrics_bind=metrics_bind,
        # The senders sign DKIM_DOMAIN with their own keys: the campaigns of most tests send From it.
        platform_from_domain=DKIM_DOMAIN, dkim_sealing_keys=(DKIM_SEALING_KEY,),
    )  # fmt: skip
    campaigns_config = dataclasses.replace(campaigns_config, **(campaigns_overrides or {}))
    campaigns_running = [
        await campaigns_service.start(campaigns_config, **(campaigns_options or {})) for _ in range(campaigns)
    ]
    bounce_config = BounceConfig(
        database_url=database_url, nats_url=nats.url, internal_key=internal_key, grpc_tls=pki.tls("bounce"),
        auth_addr=auth_addr, grpc_bind="127.0.0.1:0",
        smtp_bind=f"127.0.0.1:{free_port()}", nats_creds_file=nats.creds("bounce"), metrics_bind=metrics_bind,
    )  # fmt: skip
    bounce = await bounce_service.start(bounce_config) if bounces else None
    more_bounces = [
        await bounce_service.start(dataclasses.replace(bounce_config, smtp_bind=f"127.0.0.1:{free_port()}"))
        for _ in range(bounces - 1)
    ]
    # The senders ask no other service: campaign states and suppressions reach them over NATS.
    config = sender_config(
        database_url, nats, internal_key, sink_port, cert, dkim, metrics_bind=metrics_bind, **(sender_overrides or {})
    )
    running_senders = [await sender_service.start(config) for _ in range(senders)]
    # Bootstrapped as `make run` does it.
    async with pki.channel(auth_addr, "dev-run") as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).Bootstrap(
            auth_pb2.BootstrapRequest(
                organization_name=bootstrap.organization_name,
                admin_login=bootstrap.admin_login,
                admin_email=bootstrap.admin_email,
                admin_password=bootstrap.admin_password,
            ),
            metadata=[(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service="dev-run"), "auth"))],
        )
    return Stack(
        auth, lists, campaigns_running[0], bounce, running_senders, reply.api_token, signer, reply.organization.id,
        config, bounce_config, nats, more_campaigns=campaigns_running[1:], more_bounces=more_bounces,
        campaigns_config=campaigns_config, lists_config=lists_config, owner_id=reply.user.id,
        auth_config=auth_config, campaigns_options=dict(campaigns_options or {}),
    )  # fmt: skip
