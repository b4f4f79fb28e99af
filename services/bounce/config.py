"""Settings of the bounce service, each declared once (services.common.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import settings
from services.common.rpc import TlsFiles
from services.common.settings import setting


@dataclass(frozen=True, kw_only=True)
class Config:
    """What the bounce service needs to start."""

    database_url: str = settings.DATABASE_URL.field()
    nats_url: str = settings.NATS_URL.field()
    nats_creds_file: str = settings.NATS_CREDS_FILE.field()
    nats_stream_replicas: int = settings.NATS_STREAM_REPLICAS.field()
    internal_key: bytes = settings.INTERNAL_KEY.field()
    grpc_tls: TlsFiles
    auth_addr: str = settings.AUTH_ADDR.field()
    grpc_bind: str = setting("BOUNCE_GRPC_BIND", "0.0.0.0:50055", "where bounce serves gRPC")
    health_bind: str = settings.HEALTH_BIND.field()
    metrics_bind: str = settings.METRICS_BIND.field()
    smtp_bind: str = setting("BOUNCE_SMTP_BIND", "0.0.0.0:2525", "where bounce takes returned mail over SMTP")
    smtp_hostname: str = setting("BOUNCE_SMTP_HOSTNAME", "bounce.mailblast.example.com", "the name bounce greets with")
    max_message_bytes: int = setting(
        "BOUNCE_MAX_MESSAGE_BYTES",
        10 * 1024 * 1024,
        "the largest message taken (10 MB); a bigger DATA is refused with 552 the moment it passes the limit",
    )
    max_connections: int = setting(
        "BOUNCE_MAX_CONNECTIONS", 100, "SMTP sessions open at once; more are told 421 and closed"
    )
    max_connections_per_ip: int = setting(
        "BOUNCE_MAX_CONNECTIONS_PER_IP", 10, "SMTP sessions open at once from one client address; more get 421"
    )
    # RFC 5321 4.5.3.2.7 asks for at least five minutes between commands.
    idle_timeout_seconds: float = setting(
        "BOUNCE_IDLE_TIMEOUT_SECONDS", 300.0, "time allowed between commands; then 421 and closed"
    )
    data_timeout_seconds: float = setting(
        "BOUNCE_DATA_TIMEOUT_SECONDS", 600.0, "time allowed for a whole DATA phase; then 421 and closed"
    )

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing or malformed one is named."""
        return settings.read(cls)
