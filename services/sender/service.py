"""The sender process: ledger, NATS consumer, SMTP delivery and the gRPC server, started and stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from services.common import bus, db, metrics
from services.common.clock import Clock
from services.common.erasure import ErasureConsumer
from services.common.log import get_logger
from services.common.rpc import GrpcServer, ServiceIdentity, start_grpc_server
from services.common.sealing import SecretBox
from services.sender import convert, grpc_api
from services.sender.compose import Composer
from services.sender.config import TLS_REQUIRED, Config
from services.sender.consumers import (
    CAMPAIGN_STATES_DURABLE,
    DURABLE,
    SENDING_DOMAINS_DURABLE,
    SUPPRESSIONS_DURABLE,
    TRANSACTIONAL_DURABLE,
    BatchConsumer,
    CampaignStateCopier,
    SendingDomainCopier,
    SuppressionCopier,
    TransactionalConsumer,
)
from services.sender.decisions import RetryPolicy
from services.sender.dkim import DkimSigner, SigningKey, load_key
from services.sender.ledger import Outcome
from services.sender.sending import BatchSending
from services.sender.signing import SigningKeys
from services.sender.smtp import MxResolver, SmtpDelivery
from services.sender.store import SCHEMA, DeliveryStore
from services.sender.store_copies import CopyStore
from services.sender.transactional import TransactionalSending
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
    """A started sender: `grpc_port`, its runners (`consumer`, `transactional`, the copiers) and `stop()`."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        nc: NATS,
        grpc: GrpcServer,
        consumer: BatchConsumer,
        transactional: TransactionalConsumer,
        campaign_states: CampaignStateCopier,
        suppressions: SuppressionCopier,
        sending_domains: SendingDomainCopier,
        erasures: ErasureConsumer,
        writer: LedgerWriter,
        delivery: SmtpDelivery,
        store: DeliveryStore,
        copies: CopyStore,
        loop_tasks: list[asyncio.Task[None]],
        stop_event: asyncio.Event,
        render_pools: Sequence[ThreadPoolExecutor] = (),
    ) -> None:
        self.grpc_port = grpc.port
        self.metrics_port = grpc.metrics_port
        self.consumer = consumer
        self.transactional = transactional
        self.campaign_states = campaign_states
        self.suppressions = suppressions
        self.sending_domains = sending_domains
        self.erasures = erasures
        self.store = store
        self.copies = copies
        self._pool = pool
        self._nc = nc
        self._grpc = grpc
        self._writer = writer
        self._delivery = delivery
        self._loop_tasks = loop_tasks
        self._stop_event = stop_event
        self._render_pools = render_pools

    async def stop(self, grace: float = 20.0) -> None:
        """Stop fetching, let work under way finish (or abandon it for redelivery), close everything."""
        self._stop_event.set()
        await asyncio.gather(*self._loop_tasks, return_exceptions=True)
        await asyncio.gather(self.consumer.stop(grace), self.transactional.stop(grace))
        await asyncio.gather(
            self.campaign_states.stop(grace), self.suppressions.stop(grace), self.sending_domains.stop(grace)
        )
        await self.erasures.stop(grace)
        for render_pool in self._render_pools:
            # Nothing is queued any more; a render under way ends within its time limit.
            await asyncio.to_thread(render_pool.shutdown)
        await self._writer.stop()
        await self._delivery.close()
        await self._grpc.stop(grace=2.0)
        try:
            await self._nc.drain()
        except Exception:
            log.warning("NATS drain failed at shutdown")
        await self._pool.close()


async def start(config: Config, *, consume: bool = True, clock: Clock | None = None) -> Running:
    """Migrate, connect, start the gRPC server and (unless told not to) the runners' loops.

    Nothing here, nor on the send path, waits on another service: campaign states and suppressions come
    from NATS into the sender's own copies (store_copies.py).
    """
    me = ServiceIdentity("sender", config.grpc_tls, config.internal_key)
    await db.migrate(config.database_url, SCHEMA, SQL_DIR)
    keys = dkim_keys(config)
    pool = await db.open_pool(config.database_url, SCHEMA, min_size=2, max_size=8)
    nc, js = await bus.connect(config.nats_url, "sender", config.nats_creds_file, config.nats_stream_replicas)
    store = DeliveryStore(pool, config.internal_key)
    copies = CopyStore(pool, config.internal_key)

    async def report(outcomes: Sequence[Outcome]) -> None:
        await bus.publish(js, bus.SUBJECT_DELIVERY_REPORT, convert.delivery_report(outcomes))
        metrics.count_outcomes(outcomes)

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
    platform_signer = DkimSigner(keys)
    composer = Composer(
        key=config.internal_key,
        return_path_domain=config.return_path_domain,
        message_id_domain=config.message_id_domain,
        unsubscribe_url=config.unsubscribe_url,
        signer=platform_signer,
        system_return_path=config.system_return_path,
        tracking_url=config.tracking_url,
    )
    # Each organisation's own domains from the copy, their keys opened with the sealing keys.
    box = SecretBox(config.dkim_sealing_keys) if config.dkim_sealing_keys else None
    signing = SigningKeys(platform_signer, copies, box)
    policy = RetryPolicy(
        config.retry_base_seconds, config.retry_max_seconds, config.give_up_seconds, config.pause_recheck_seconds
    )
    render_pools = [ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix=f"sender-render-{kind}") for kind in "bt"]
    batches = BatchSending(
        ledger=store, recorder=writer, gate=copies, transport=delivery, composer=composer, policy=policy,
        concurrency=config.concurrency, claim_seconds=config.claim_seconds, clock=clock, render_pool=render_pools[0],
        signing=signing,
    )  # fmt: skip
    # Same process, delivery pool, signer and ledger writer; its own durable, so a large campaign
    # never queues a password reset behind its batches.
    messages = TransactionalSending(
        ledger=store, recorder=writer, suppressions=copies, transport=delivery, composer=composer, policy=policy,
        clock=clock, render_pool=render_pools[1], signing=signing,
    )  # fmt: skip
    consumer = BatchConsumer(
        js, batches, batches_in_flight=config.batches_in_flight, ack_wait=config.ack_wait_seconds,
        retry_delay=config.retry_base_seconds,
    )  # fmt: skip
    transactional = TransactionalConsumer(
        js, messages, slots=max(4, config.concurrency // 4), ack_wait=config.ack_wait_seconds,
        retry_delay=config.retry_base_seconds,
    )  # fmt: skip
    campaign_states = CampaignStateCopier(js, copies)
    suppressions = SuppressionCopier(js, copies)
    sending_domains = SendingDomainCopier(js, copies)
    erasures = ErasureConsumer(js, ERASURES_DURABLE, store.erase)
    for runner in (consumer, transactional, campaign_states, suppressions, sending_domains, erasures):
        await runner.start()
    grpc = await start_grpc_server(
        config.grpc_bind, grpc_api.register(store), me, health_bind=config.health_bind, metrics_bind=config.metrics_bind
    )
    stop_event = asyncio.Event()
    loops = {
        DURABLE: consumer, TRANSACTIONAL_DURABLE: transactional, CAMPAIGN_STATES_DURABLE: campaign_states,
        SUPPRESSIONS_DURABLE: suppressions, SENDING_DOMAINS_DURABLE: sending_domains, ERASURES_DURABLE: erasures,
    }  # fmt: skip
    loop_tasks = (
        [asyncio.create_task(runner.run(stop_event), name=name) for name, runner in loops.items()] if consume else []
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
        pool=pool, nc=nc, grpc=grpc, consumer=consumer, transactional=transactional, campaign_states=campaign_states,
        suppressions=suppressions, sending_domains=sending_domains,
        erasures=erasures, writer=writer, delivery=delivery, store=store, copies=copies,
        loop_tasks=loop_tasks, stop_event=stop_event, render_pools=render_pools,
    )  # fmt: skip
