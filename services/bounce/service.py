"""Start and stop the bounce service: schema, NATS, the delivery consumer, inbound SMTP and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from mailblast.v1 import bounce_pb2_grpc
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from services.bounce.config import Config
from services.bounce.consumers import DeliveryReportConsumer
from services.bounce.events import announcer
from services.bounce.grpc_api import BounceServicer
from services.bounce.recorder import BounceRecorder
from services.bounce.smtp import BounceHandler, BoundedSMTP, ConnectionCounter, SessionLimits
from services.bounce.store import BounceStore
from services.common import bus, db, rpc
from services.common.erasure import ErasureConsumer
from services.common.log import get_logger

log = get_logger(__name__)
SCHEMA = "bounce"
SQL_DIR = Path(__file__).parent / "sql"
ERASURES_DURABLE = "bounce-erasures"


def _host_port(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    # bandit B104: the bounce listener takes mail from the internet; a bind without a host means every
    # interface, as the operator's BOUNCE_SMTP_BIND chose
    return host.strip("[]") or "0.0.0.0", int(port)  # nosec B104


@dataclass
class Running:
    """A started bounce service; `.grpc_port`, `.smtp_port`, and `.consumer` / `.erasures` for tests' run_once."""

    grpc_port: int
    smtp_port: int
    consumer: DeliveryReportConsumer
    erasures: ErasureConsumer
    recorder: BounceRecorder
    _grpc: rpc.GrpcServer
    _smtp: asyncio.base_events.Server
    _nc: NATS
    _pool: AsyncConnectionPool
    _stop: asyncio.Event
    _consumer_tasks: list[asyncio.Task]

    @property
    def metrics_port(self) -> int:
        """The bound /metrics port (0: none)."""
        return self._grpc.metrics_port

    async def stop(self) -> None:
        """Stop taking mail and calls, finish the batch under way, close connections."""
        self._smtp.close()
        await self._smtp.wait_closed()
        await self._grpc.stop()
        self._stop.set()
        for task in self._consumer_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.consumer.stop()
        await self.erasures.stop()
        await self._nc.drain()
        await self._pool.close()


async def start(config: Config, *, run_consumers: bool = True) -> Running:
    """Migrate, connect, and start the consumer, the SMTP listener and the gRPC server.

    With run_consumers=False the consumer is bound but not looped, for tests that call run_once.
    """
    me = rpc.ServiceIdentity("bounce", config.grpc_tls, config.internal_key)
    await db.migrate(config.database_url, SCHEMA, SQL_DIR)
    pool = await db.open_pool(config.database_url, SCHEMA)
    nc, js = await bus.connect(config.nats_url, "bounce", config.nats_creds_file, config.nats_stream_replicas)
    store = BounceStore(pool)
    recorder = BounceRecorder(store, announcer(js), config.internal_key)

    consumer = DeliveryReportConsumer(js, recorder)
    erasures = ErasureConsumer(js, ERASURES_DURABLE, store.erase)
    await consumer.start()
    await erasures.start()
    stop = asyncio.Event()
    tasks = (
        [
            asyncio.create_task(consumer.run(stop), name="bounce-delivery"),
            asyncio.create_task(erasures.run(stop), name=ERASURES_DURABLE),
        ]
        if run_consumers
        else []
    )

    handler = BounceHandler(config.internal_key, recorder.record_returned_message)
    limits = SessionLimits(
        max_connections=config.max_connections,
        max_connections_per_ip=config.max_connections_per_ip,
        idle_timeout=config.idle_timeout_seconds,
        data_timeout=config.data_timeout_seconds,
        max_message_bytes=config.max_message_bytes,
    )
    counter = ConnectionCounter(limits)
    host, port = _host_port(config.smtp_bind)
    loop = asyncio.get_running_loop()
    smtp_server = await loop.create_server(
        lambda: BoundedSMTP(
            handler, counter, limits, hostname=config.smtp_hostname, enable_SMTPUTF8=True, decode_data=False
        ),
        host=host,
        port=port,
    )
    smtp_port = smtp_server.sockets[0].getsockname()[1]

    resolver = None
    if config.auth_addr:
        resolver = rpc.auth_token_resolver(rpc.service_channel(config.auth_addr, "auth", me), me)

    def register(server):
        bounce_pb2_grpc.add_BounceServiceServicer_to_server(BounceServicer(store), server)
        return ["mailblast.v1.BounceService"]

    grpc_server = await rpc.start_grpc_server(
        config.grpc_bind, register, me, resolver, config.health_bind, metrics_bind=config.metrics_bind
    )
    log.info("bounce service started", grpc_port=grpc_server.port, smtp_port=smtp_port)
    return Running(
        grpc_port=grpc_server.port,
        smtp_port=smtp_port,
        consumer=consumer,
        erasures=erasures,
        recorder=recorder,
        _grpc=grpc_server,
        _smtp=smtp_server,
        _nc=nc,
        _pool=pool,
        _stop=stop,
        _consumer_tasks=tasks,
    )
