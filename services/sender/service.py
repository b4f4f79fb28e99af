"""The sender process: ledger, NATS consumer, SMTP delivery and the gRPC server, started and stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from services.common import bus, db
from services.common.erasure import erasure_consumer
from services.common.log import get_logger
from services.common.rpc import GrpcServer, ServiceIdentity, service_channel, start_grpc_server
from services.sender import grpc_api
from services.sender.checks import CampaignStates, SuppressionCheck
from services.sender.compose import Composer
from services.sender.config import TLS_REQUIRED, Config
from services.sender.consumers import SendBatchConsumer, delivery_report
from services.sender.dkim import DkimSigner, SigningKey, load_key
from services.sender.smtp import MxResolver, SmtpDelivery
from services.sender.store import SCHEMA, DeliveryStore, Outcome
from services.sender.transactional import TransactionalConsumer
from services.sender.writer import LedgerWriter

log = get_logger(__name__)

SQL_DIR = Path(__file__).parent / "sql"
ERASURES_DURABLE = "sender-erasures"

# Threads that render and sign, per consumer. Rendering is Python under the GIL: more threads add no
# speed and only compete with the event loop for it. Measured with a campaign needing ~45 ms per render
# (tests/system/test_render_starvation.py): rendering on the loop stalled it 3.1 s and the password
# reset went out after the whole campaign; one thread each keeps the worst stall near 0.1-0.3 s on a
# loaded machine, and the reset leaves while the campaign is still sending.
RENDER_THREADS = 1


def dkim_keys(config: Config) -> list[SigningKey]:
    """The configured DKIM keys (RSA, then Ed25519), parsed once."""
    keys = []
    if config.dkim_domain and config.dkim_selector and config.dkim_key_file:
        keys.append(load_key(config.dkim_domain, config.dkim_selector, config.dkim_key_file))
    if config.dkim_domain and config.dkim_ed25519_selector and config.dkim_ed25519_key_file:
        keys.append(load_key(config.dkim_domain, config.dkim_ed25519_selector, config.dkim_ed25519_key_file))
    return keys


class Running:
    """A started sender: `grpc_port`, the `consumer` and `transactional` consumers, and `stop()`."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        nc: NATS,
        grpc: GrpcServer,
        consumer: SendBatchConsumer,
        transactional: TransactionalConsumer,
        writer: LedgerWriter,
        delivery: SmtpDelivery,
        store: DeliveryStore,
        loop_tasks: list[asyncio.Task[None]],
        stop_event: asyncio.Event,
        erasures: bus.PullConsumer,
        channels: Sequence[grpc.aio.Channel] = (),
        render_pools: Sequence[ThreadPoolExecutor] = (),
    ) -> None:
        self.grpc_port = grpc.port
        self.consumer = consumer
        self.transactional = transactional
        self.erasures = erasures
        self.store = store
        self._pool = pool
        self._nc = nc
        self._grpc = grpc
        self._writer = writer
        self._delivery = delivery
        self._loop_tasks = loop_tasks
        self._stop_event = stop_event
        self._channels = channels
        self._render_pools = render_pools

    async def stop(self, grace: float = 20.0) -> None:
        """Stop fetching, let work under way finish (or abandon it for redelivery), close everything."""
        self._stop_event.set()
        await asyncio.gather(*self._loop_tasks, return_exceptions=True)
        await asyncio.gather(self.consumer.stop(grace), self.transactional.stop(grace))
        await self.erasures.stop()
        for render_pool in self._render_pools:
            # Nothing is queued any more; a render under way ends within its time limit.
            await asyncio.to_thread(render_pool.shutdown)
        await self._writer.stop()
        await self._delivery.close()
        await self._grpc.stop(grace=2.0)
        for channel in self._channels:
            await channel.close()
        try:
            await self._nc.drain()
        except Exception:
            log.warning("NATS drain failed at shutdown")
        await self._pool.close()


async def start(config: Config, *, consume: bool = True) -> Running:
    """Migrate, connect, start the gRPC server and (unless told not to) the batch and transactional loops."""
    me = ServiceIdentity("sender", config.grpc_tls, config.internal_key)
    await db.migrate(config.database_url, SCHEMA, SQL_DIR)
    keys = dkim_keys(config)
    pool = await db.open_pool(config.database_url, SCHEMA, min_size=2, max_size=8)
    nc, js = await bus.connect(config.nats_url, "sender", config.nats_creds_file, config.nats_stream_replicas)
    store = DeliveryStore(pool, config.internal_key)
    campaigns_channel = service_channel(config.campaigns_addr, "campaigns", me) if config.campaigns_addr else None
    lists_channel = service_channel(config.lists_addr, "lists", me) if config.lists_addr else None
    suppression = SuppressionCheck(lists_channel)

    async def report(outcomes: Sequence[Outcome]) -> None:
        await bus.publish(js, bus.SUBJECT_DELIVERY_REPORT, delivery_report(outcomes))

    writer = LedgerWriter(store, report)
    writer.start()
    delivery = SmtpDelivery(
        ehlo_name=config.ehlo_name,
        relay=(config.relay_host, config.relay_port) if config.relay_host else None,
        tls_required=config.tls == TLS_REQUIRED,
        tls_ca_file=config.tls_ca_file,
        timeout=config.smtp_timeout_seconds,
        connections_per_host=config.concurrency if config.relay_host else min(config.concurrency, 8),
        lookup=MxResolver(port=config.mx_port, nameserver=config.dns_resolver),
    )
    composer = Composer(
        key=config.internal_key,
        return_path_domain=config.return_path_domain,
        message_id_domain=config.message_id_domain,
        unsubscribe_url=config.unsubscribe_url,
        signer=DkimSigner(keys),
        system_return_path=config.system_return_path,
    )
    render_pools = [ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix=f"sender-render-{kind}") for kind in "bt"]
    consumer = SendBatchConsumer(
        js=js,
        store=store,
        writer=writer,
        composer=composer,
        delivery=delivery,
        concurrency=config.concurrency,
        batches_in_flight=config.batches_in_flight,
        retry_base_seconds=config.retry_base_seconds,
        retry_max_seconds=config.retry_max_seconds,
        give_up_seconds=config.give_up_seconds,
        ack_wait_seconds=config.ack_wait_seconds,
        claim_seconds=config.claim_seconds,
        campaign_states=CampaignStates(campaigns_channel),
        suppression=suppression,
        pause_recheck_seconds=config.pause_recheck_seconds,
        render_pool=render_pools[0],
    )
    # Same process, delivery pool, signer and ledger writer; its own durable, so a large campaign
    # never queues a password reset behind its batches.
    transactional = TransactionalConsumer(
        js=js,
        store=store,
        writer=writer,
        composer=composer,
        delivery=delivery,
        concurrency=max(4, config.concurrency // 4),
        retry_base_seconds=config.retry_base_seconds,
        retry_max_seconds=config.retry_max_seconds,
        give_up_seconds=config.give_up_seconds,
        ack_wait_seconds=config.ack_wait_seconds,
        suppression=suppression,
        render_pool=render_pools[1],
    )
    erasures = erasure_consumer(js, ERASURES_DURABLE, store.erase)
    await consumer.start()
    await transactional.start()
    await erasures.start()
    grpc = await start_grpc_server(config.grpc_bind, grpc_api.register(store), me, health_bind=config.health_bind)
    stop_event = asyncio.Event()
    loop_tasks = (
        [
            asyncio.create_task(consumer.run(stop_event), name="sender-batches"),
            asyncio.create_task(transactional.run(stop_event), name="sender-transactional"),
            asyncio.create_task(erasures.run(stop_event), name=ERASURES_DURABLE),
        ]
        if consume
        else []
    )
    log.info(
        "sender started",
        grpc_port=grpc.port,
        relay=config.relay_host or "MX",
        tls=config.tls,
        dkim=[key.algorithm.decode() for key in keys],
        concurrency=config.concurrency,
    )
    return Running(
        pool=pool,
        nc=nc,
        grpc=grpc,
        consumer=consumer,
        transactional=transactional,
        writer=writer,
        delivery=delivery,
        store=store,
        loop_tasks=loop_tasks,
        stop_event=stop_event,
        erasures=erasures,
        channels=[c for c in (campaigns_channel, lists_channel) if c is not None],
        render_pools=render_pools,
    )
