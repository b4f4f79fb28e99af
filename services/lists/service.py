"""Starting and stopping the lists service: database, NATS bounce consumer, gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
from mailblast.v1 import auth_pb2_grpc, lists_pb2, lists_pb2_grpc
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from services.common import bus, db
from services.common.audit import AuditTrail
from services.common.clock import Clock
from services.common.log import get_logger
from services.common.outbox import OutboxRelay
from services.common.rpc import (
    GrpcServer,
    ServiceIdentity,
    auth_token_resolver,
    service_channel,
    start_grpc_server,
)
from services.lists.announcements import suppression_relay
from services.lists.audience import AudienceStore
from services.lists.config import Config
from services.lists.consumers import BounceConsumer
from services.lists.erasures import ErasureAnnouncer
from services.lists.grpc_api import ListsServicer
from services.lists.imports import ImportRunner
from services.lists.store import ListsStore

log = get_logger(__name__)

SCHEMA = "lists"
SQL_DIR = Path(__file__).parent / "sql"
SERVICE_NAME = "lists"


class Running:
    """A started lists service; `bounce_consumer` can be stepped with run_once."""

    def __init__(
        self,
        server: GrpcServer,
        pool: AsyncConnectionPool,
        nc: NATS,
        bounce_consumer: BounceConsumer,
        auth_channel: grpc.aio.Channel | None,
        imports: ImportRunner,
        erasures: ErasureAnnouncer,
        suppressions: OutboxRelay,
    ) -> None:
        self._server = server
        self._pool = pool
        self._nc = nc
        self._auth_channel = auth_channel
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.bounce_consumer = bounce_consumer
        self.imports = imports
        self.erasures = erasures
        self.grpc_port = server.port
        self.metrics_port = server.metrics_port
        # Import jobs always run in the background: queued ones, and those a stopped process left.
        self._tasks.append(asyncio.create_task(imports.run(self._stop), name="lists-imports"))
        # So do erasures not yet announced (NATS was away when they were committed).
        self._tasks.append(asyncio.create_task(erasures.run(self._stop), name="lists-erasures"))
        # And every suppression list change, for the senders' copies (they never ask lists).
        self.suppressions = suppressions
        self._tasks.append(asyncio.create_task(suppressions.run(self._stop), name="lists-suppressions"))

    def run_in_background(self) -> None:
        """Consume bounce events until stop()."""
        self._tasks.append(asyncio.create_task(self.bounce_consumer.run(self._stop), name="lists-bounces"))

    async def stop(self) -> None:
        """Stop consuming, finish calls under way, then close NATS, the auth channel and the pool."""
        self._stop.set()
        for task in self._tasks:
            if task.get_name() == "lists-imports":
                # An import stops mid-chunk; its uncommitted chunk is redone when it resumes.
                task.cancel()
            # The loop notices the stop event within one fetch timeout; don't wait longer than that.
            try:
                await asyncio.wait_for(task, timeout=5)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except asyncio.CancelledError:
                pass
        await self._server.stop()
        await self.bounce_consumer.stop()
        await self._nc.drain()
        if self._auth_channel is not None:
            await self._auth_channel.close()
        await self._pool.close()


async def start(config: Config, *, clock: Clock | None = None) -> Running:
    """Migrate the lists schema, open its pool, bind the bounce consumer and serve gRPC.

    `clock` is what the double opt-in limits count time in (the current time unless a test moves it).
    """
    me = ServiceIdentity(SERVICE_NAME, config.grpc_tls, config.internal_key)
    await db.migrate(config.database_url, SCHEMA, SQL_DIR)
    pool = await db.open_pool(config.database_url, SCHEMA)
    nc: NATS | None = None
    auth_channel: grpc.aio.Channel | None = None
    try:
        store = ListsStore(pool, config.internal_key)
        nc, js = await bus.connect(config.nats_url, SERVICE_NAME, config.nats_creds_file, config.nats_stream_replicas)
        consumer = BounceConsumer(js, store, config.hard_bounce_threshold)
        await consumer.start()
        resolve_token = None
        auth = None
        if config.auth_addr:
            auth_channel = service_channel(config.auth_addr, "auth", me)
            resolve_token = auth_token_resolver(auth_channel, me)
            auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
        imports = ImportRunner(pool, config.internal_key, config.import_batch_rows)
        erasures = ErasureAnnouncer(pool, js)
        servicer = ListsServicer(
            store,
            AudienceStore(pool, config.internal_key),
            imports,
            js,
            config.internal_key,
            config.public_url,
            config.signup_rate_per_hour,
            AuditTrail(auth),
            erasures,
            config.confirm_window_seconds,
            config.confirm_daily_cap,
            clock,
        )
        imports.on_finished = servicer.import_finished

        def register(server: grpc.aio.Server) -> list[str]:
            lists_pb2_grpc.add_ListsServiceServicer_to_server(servicer, server)
            return [lists_pb2.DESCRIPTOR.services_by_name["ListsService"].full_name]

        server = await start_grpc_server(
            config.grpc_bind, register, me, resolve_token=resolve_token, health_bind=config.health_bind,
            metrics_bind=config.metrics_bind,
        )  # fmt: skip
    except BaseException:
        if auth_channel is not None:
            await auth_channel.close()
        if nc is not None:
            await nc.close()
        await pool.close()
        raise
    running = Running(server, pool, nc, consumer, auth_channel, imports, erasures, suppression_relay(pool, js))
    if config.consume_in_background:
        running.run_in_background()
    log.info("lists started", grpc_port=server.port, auth=bool(config.auth_addr))
    return running
