"""Starting and stopping the auth service."""

from __future__ import annotations

from pathlib import Path

import grpc
from mailblast.v1 import auth_pb2, auth_pb2_grpc
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from services.auth.authenticate import TokenAuthenticator
from services.auth.config import Config
from services.auth.grpc_api import AuthServicer
from services.auth.mailer import mailer
from services.auth.security import AccountSecurity
from services.auth.store import AuthStore
from services.common import bus, db
from services.common.clock import Clock
from services.common.log import get_logger
from services.common.rpc import GrpcServer, ServiceIdentity, start_grpc_server

log = get_logger(__name__)

SCHEMA = "auth"
SQL_DIR = Path(__file__).parent / "sql"


class Running:
    """A started auth service."""

    def __init__(self, server: GrpcServer, pool: AsyncConnectionPool, nc: NATS) -> None:
        self._server = server
        self._pool = pool
        self._nc = nc
        self.grpc_port = server.port
        self.metrics_port = server.metrics_port

    async def stop(self) -> None:
        """Finish calls under way, then close NATS and the database pool."""
        await self._server.stop()
        await self._nc.close()
        await self._pool.close()


async def start(config: Config, *, clock: Clock | None = None) -> Running:
    """Migrate the auth schema, open its pool, connect NATS and serve gRPC; lockouts go by `clock` (the system's)."""
    me = ServiceIdentity("auth", config.grpc_tls, config.internal_key)
    await db.migrate(config.database_url, SCHEMA, SQL_DIR)
    pool = await db.open_pool(config.database_url, SCHEMA)
    nc: NATS | None = None
    try:
        nc, js = await bus.connect(config.nats_url, "auth", config.nats_creds_file, config.nats_stream_replicas)
        store = AuthStore(pool)
        authenticator = TokenAuthenticator(store)

        security = AccountSecurity(store, config, mailer(js), clock)
        resealed = await security.reseal_totp_secrets()
        if resealed:
            log.info("totp secrets sealed with the current key", count=resealed)
        servicer = AuthServicer(store, authenticator, security)

        def register(server: grpc.aio.Server) -> list[str]:
            auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
            return [auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name]

        # Auth answers its own bearer tokens locally, so users can manage tokens with a token.
        server = await start_grpc_server(
            config.grpc_bind, register, me, resolve_token=authenticator, health_bind=config.health_bind,
            metrics_bind=config.metrics_bind,
        )  # fmt: skip
    except BaseException:
        if nc is not None:
            await nc.close()
        await pool.close()
        raise
    return Running(server, pool, nc)
