"""Starting and stopping the lists service: database, NATS bounce consumer, gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path

import grpc
from mailblast.v1 import (
    auth_pb2_grpc,
    lists_fields_pb2,
    lists_fields_pb2_grpc,
    lists_imports_pb2,
    lists_imports_pb2_grpc,
    lists_pb2,
    lists_pb2_grpc,
    lists_privacy_pb2,
    lists_privacy_pb2_grpc,
    lists_segments_pb2,
    lists_segments_pb2_grpc,
    lists_signup_pb2,
    lists_signup_pb2_grpc,
    lists_suppression_pb2,
    lists_suppression_pb2_grpc,
)
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from services.common import bus, db, mail
from services.common.audit import AuditTrail
from services.common.clock import Clock, SystemClock
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
from services.lists.config import Config
from services.lists.consumers import BounceConsumer
from services.lists.erasures import ErasureAnnouncer
from services.lists.grpc_api import ListsServicer
from services.lists.grpc_fields import FieldsServicer
from services.lists.grpc_imports import ImportsServicer
from services.lists.grpc_privacy import PrivacyServicer
from services.lists.grpc_segments import SavedSegments, SegmentsServicer
from services.lists.grpc_signup import SignupServicer
from services.lists.grpc_suppression import SuppressionServicer
from services.lists.imports import ImportRunner
from services.lists.store import ListsStore
from services.lists.store_fields import FieldStore
from services.lists.store_imports import ImportStore
from services.lists.store_privacy import PrivacyStore
from services.lists.store_segments import SegmentStore
from services.lists.store_signup import SignupStore
from services.lists.store_subscribers import SubscriberStore
from services.lists.store_suppression import SuppressionStore

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
        audit = AuditTrail(auth)
        key = config.internal_key
        field_store = FieldStore(pool)
        subscribers = SubscriberStore(pool, key)
        saved = SavedSegments(SegmentStore(pool), field_store)
        imports_servicer = ImportsServicer(ImportStore(pool), imports, store, field_store, saved, subscribers, audit)
        imports.on_finished = imports_servicer.import_finished
        servicers = [
            (lists_pb2, "ListsService", lists_pb2_grpc.add_ListsServiceServicer_to_server,
             ListsServicer(store, subscribers, field_store, saved)),
            (lists_fields_pb2, "ListsFieldsService", lists_fields_pb2_grpc.add_ListsFieldsServiceServicer_to_server,
             FieldsServicer(field_store, audit)),
            (lists_imports_pb2, "ListsImportsService",
             lists_imports_pb2_grpc.add_ListsImportsServiceServicer_to_server, imports_servicer),
            (lists_segments_pb2, "ListsSegmentsService",
             lists_segments_pb2_grpc.add_ListsSegmentsServiceServicer_to_server,
             SegmentsServicer(SegmentStore(pool), saved, field_store, store, subscribers, audit)),
            (lists_suppression_pb2, "ListsSuppressionService",
             lists_suppression_pb2_grpc.add_ListsSuppressionServiceServicer_to_server,
             SuppressionServicer(SuppressionStore(pool, key), key, audit)),
            (lists_signup_pb2, "ListsSignupService", lists_signup_pb2_grpc.add_ListsSignupServiceServicer_to_server,
             SignupServicer(
                 SignupStore(pool, key), store, field_store, SuppressionStore(pool, key),
                 functools.partial(mail.send, js), audit, clock or SystemClock(), internal_key=key,
                 public_url=config.public_url, signup_rate_per_hour=config.signup_rate_per_hour,
                 confirm_window_seconds=config.confirm_window_seconds, confirm_daily_cap=config.confirm_daily_cap,
             )),
            (lists_privacy_pb2, "ListsPrivacyService",
             lists_privacy_pb2_grpc.add_ListsPrivacyServiceServicer_to_server,
             PrivacyServicer(PrivacyStore(pool, key), erasures, audit)),
        ]  # fmt: skip

        def register(server: grpc.aio.Server) -> list[str]:
            # One process, one port: ListsService and a service per audience sub-domain.
            for _, _, add, servicer in servicers:
                add(servicer, server)
            return [module.DESCRIPTOR.services_by_name[name].full_name for module, name, _, _ in servicers]

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
