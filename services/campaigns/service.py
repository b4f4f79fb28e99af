"""The campaigns service process: schema, NATS, fan-out, counters and the gRPC API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from mailblast.v1 import (
    auth_pb2_grpc,
    campaigns_pb2,
    campaigns_pb2_grpc,
    domains_pb2,
    domains_pb2_grpc,
    events_pb2,
    lists_pb2_grpc,
    lists_segments_pb2_grpc,
)
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from services.campaigns.announcements import campaign_state_relay, sending_domain_relay
from services.campaigns.batches import JetStreamBatches
from services.campaigns.config import Config
from services.campaigns.consumers import BounceCounter, DeliveryCounter
from services.campaigns.dnslookup import DnsLookup
from services.campaigns.domains import Platform
from services.campaigns.fanout import FanOut
from services.campaigns.grpc_api import CampaignsServicer
from services.campaigns.grpc_domains import DomainsServicer
from services.campaigns.recipients import ListsAudience
from services.campaigns.schedule import Scheduler
from services.campaigns.store import CampaignStore
from services.campaigns.store_domains import DomainStore
from services.common import bus, db, mail
from services.common.clock import Clock, SystemClock
from services.common.erasure import ErasureConsumer
from services.common.log import get_logger
from services.common.outbox import OutboxRelay
from services.common.rpc import (
    GrpcServer,
    ServiceIdentity,
    auth_token_resolver,
    service_channel,
    start_grpc_server,
)
from services.common.sealing import SecretBox

log = get_logger(__name__)

SCHEMA = "campaigns"
SQL_DIR = Path(__file__).parent / "sql"
ERASURES_DURABLE = "campaigns-erasures"


@dataclass
class Running:
    """A started campaigns service."""

    grpc_server: GrpcServer
    pool: AsyncConnectionPool
    nc: NATS
    fanout: FanOut
    store: CampaignStore
    delivery_consumer: DeliveryCounter
    bounce_consumer: BounceCounter
    erasure_consumer: ErasureConsumer
    states: OutboxRelay
    domains: OutboxRelay
    channels: list[grpc.aio.Channel]
    scheduler: Scheduler
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def grpc_port(self) -> int:
        """The bound gRPC port."""
        return self.grpc_server.port

    @property
    def metrics_port(self) -> int:
        """The bound /metrics port (0: none)."""
        return self.grpc_server.metrics_port

    async def stop(self) -> None:
        """Stop serving, fanning out and consuming; progress is kept for the next start."""
        await self.grpc_server.stop()
        self._stop.set()
        await self.fanout.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for consumer in (self.delivery_consumer, self.bounce_consumer, self.erasure_consumer):
            await consumer.stop()
        await self.nc.drain()
        for channel in self.channels:
            await channel.close()
        await self.pool.close()


async def start(
    config: Config, *, run_consumers: bool = True, clock: Clock | None = None, run_scheduler: bool = True
) -> Running:
    """Migrate, connect and serve; resume any fan-out a previous process left unfinished.

    Scheduled campaigns start by `clock` (tests move it); with run_scheduler=False only `scheduler.run_once`
    starts them (tests step it).
    """
    clock = clock or SystemClock()
    await db.migrate(config.database_url, SCHEMA, SQL_DIR)
    pool = await db.open_pool(config.database_url, SCHEMA, max_size=10)
    store = CampaignStore(pool)
    me = ServiceIdentity("campaigns", config.grpc_tls, config.internal_key)
    nc, js = await bus.connect(config.nats_url, "campaigns", config.nats_creds_file, config.nats_stream_replicas)
    lists_channel = service_channel(config.lists_addr, "lists", me)
    channels = [lists_channel]
    lists = lists_pb2_grpc.ListsServiceStub(lists_channel)
    resolver = None
    auth = None
    if config.auth_addr:
        auth_channel = service_channel(config.auth_addr, "auth", me)
        channels.append(auth_channel)
        resolver = auth_token_resolver(auth_channel, me)
        auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
    fanout = FanOut(store, ListsAudience(lists), JetStreamBatches(js), config.batch_size)

    async def send_mail(message: events_pb2.TransactionalMessage) -> None:
        await mail.send_transactional(js, message)

    domain_store = DomainStore(pool)
    box = SecretBox(config.dkim_sealing_keys) if config.dkim_sealing_keys else None
    if box is not None:
        # Keys sealed under a sealing key now second in the list move to the first; the outbox then
        # hands the resealed keys to the senders.
        resealed = await domain_store.reseal(box.reseal)
        if resealed:
            log.info("DKIM keys resealed with the first sealing key", count=resealed)
    platform = Platform(config.spf_include, config.return_path_target, config.dmarc_report_address)
    servicer = CampaignsServicer(
        store, fanout, lists, lists_segments_pb2_grpc.ListsSegmentsServiceStub(lists_channel), send_mail, auth,
        domains=domain_store, platform_domain=config.platform_from_domain,
        clock=clock, time_zone=config.time_zone, tracking_key=config.internal_key,
    )  # fmt: skip
    domains_servicer = DomainsServicer(domain_store, DnsLookup(config.dns_resolver), platform, box, auth)
    scheduler = Scheduler(store, clock, servicer.start_scheduled, config.schedule_poll_seconds)

    def register(server: grpc.aio.Server) -> list[str]:
        campaigns_pb2_grpc.add_CampaignsServiceServicer_to_server(servicer, server)
        domains_pb2_grpc.add_DomainsServiceServicer_to_server(domains_servicer, server)
        return [
            campaigns_pb2.DESCRIPTOR.services_by_name["CampaignsService"].full_name,
            domains_pb2.DESCRIPTOR.services_by_name["DomainsService"].full_name,
        ]

    grpc_server = await start_grpc_server(
        config.grpc_bind, register, me, resolver, config.health_bind, metrics_bind=config.metrics_bind
    )
    deliveries = DeliveryCounter(js, store)
    bounces = BounceCounter(js, store)
    erasures = ErasureConsumer(js, ERASURES_DURABLE, store.erase)
    await deliveries.start()
    await bounces.start()
    await erasures.start()
    states = campaign_state_relay(pool, js)
    domains_relay = sending_domain_relay(pool, js)
    running = Running(
        grpc_server, pool, nc, fanout, store, deliveries, bounces, erasures, states, domains_relay, channels, scheduler
    )
    # Every state change goes to the senders' copies (they never ask campaigns), consumers stepped or not.
    running._tasks = [
        asyncio.create_task(states.run(running._stop), name="campaigns-states"),
        asyncio.create_task(domains_relay.run(running._stop), name="campaigns-sending-domains"),
    ]
    if run_consumers:
        running._tasks += [
            asyncio.create_task(deliveries.run(running._stop), name="campaigns-delivery"),
            asyncio.create_task(bounces.run(running._stop), name="campaigns-bounces"),
            asyncio.create_task(erasures.run(running._stop), name=ERASURES_DURABLE),
        ]
    for campaign in await store.unfinished_fanouts():
        fanout.start(campaign)
    if run_scheduler:
        # Its first look is at once: a campaign that fell due while no campaigns process ran starts now.
        running._tasks.append(asyncio.create_task(scheduler.run(running._stop), name="campaigns-scheduler"))
    return running
