"""Settings of the lists service, each declared once (services.common.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import settings
from services.common.rpc import TlsFiles
from services.common.settings import setting


@dataclass(frozen=True, kw_only=True)
class Config:
    """What the lists service needs to start."""

    database_url: str = settings.DATABASE_URL.field()
    nats_url: str = settings.NATS_URL.field()
    nats_creds_file: str = settings.NATS_CREDS_FILE.field()
    nats_stream_replicas: int = settings.NATS_STREAM_REPLICAS.field()
    internal_key: bytes = settings.INTERNAL_KEY.field()
    grpc_tls: TlsFiles
    grpc_bind: str = setting("LISTS_GRPC_BIND", "0.0.0.0:50052", "where lists serves gRPC")
    health_bind: str = settings.HEALTH_BIND.field()
    metrics_bind: str = settings.METRICS_BIND.field()
    auth_addr: str = settings.AUTH_ADDR.field()
    hard_bounce_threshold: int = setting(
        "LISTS_HARD_BOUNCE_THRESHOLD", 3, "hard bounces after which a subscriber's address is no longer mailed"
    )
    # Not a setting: tests drive the bounce consumer with run_once instead.
    consume_in_background: bool = True
    import_batch_rows: int = setting(
        "LISTS_IMPORT_BATCH_ROWS",
        20000,
        "rows per committed import chunk (a resumed import restarts from the last one committed)",
    )
    public_url: str = setting(
        "LISTS_PUBLIC_URL",
        "http://127.0.0.1:8080/",
        "base of the `/c/<token>` confirmation and `/f/<id>` form links (the console's public https URL)",
    )
    signup_rate_per_hour: int = setting("LISTS_SIGNUP_RATE_PER_HOUR", 10, "signups per source IP and hour")
    confirm_window_seconds: int = setting(
        "LISTS_CONFIRM_WINDOW_SECONDS",
        900,
        "one double opt-in mail per address and form per window; a signup over it gets the same answer and no mail",
    )
    confirm_daily_cap: int = setting(
        "LISTS_CONFIRM_DAILY_CAP",
        3,
        "double opt-in mails per address and organisation in 24 h; a signup over it gets the same answer and no mail",
    )

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing or malformed one is named."""
        return settings.read(cls)
