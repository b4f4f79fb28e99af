"""Settings of the campaigns service, each declared once (services.common.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import settings
from services.common.rpc import TlsFiles
from services.common.settings import setting


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the campaigns service reads from the environment."""

    database_url: str = settings.DATABASE_URL.field()
    nats_url: str = settings.NATS_URL.field()
    nats_creds_file: str = settings.NATS_CREDS_FILE.field()
    nats_stream_replicas: int = settings.NATS_STREAM_REPLICAS.field()
    internal_key: bytes = settings.INTERNAL_KEY.field()
    # Recipients come from lists: campaigns cannot send without it.
    lists_addr: str = settings.LISTS_ADDR.field(required=True)
    grpc_tls: TlsFiles
    auth_addr: str = settings.AUTH_ADDR.field()
    grpc_bind: str = setting("CAMPAIGNS_GRPC_BIND", "0.0.0.0:50053", "where campaigns serves gRPC")
    health_bind: str = settings.HEALTH_BIND.field()
    metrics_bind: str = settings.METRICS_BIND.field()
    batch_size: int = setting("CAMPAIGNS_BATCH_SIZE", 500, "recipients per SendBatch")
    time_zone: str = settings.TIME_ZONE.field()
    schedule_poll_seconds: float = setting(
        "CAMPAIGNS_SCHEDULE_POLL_SECONDS",
        5.0,
        "how often each campaigns process looks for scheduled campaigns that are due: one starts at most this "
        "long after its time (by one process only, whichever claims it first)",
    )

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing or malformed one is named."""
        return settings.read(cls)
