"""Settings of the campaigns service, each declared once (services.common.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import settings
from services.common.nameserver import nameserver_address
from services.common.rpc import TlsFiles
from services.common.settings import ConfigError, setting


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
    dkim_sealing_keys: tuple[bytes, ...] = settings.DKIM_SEALING_KEYS.field()
    dns_resolver: str = setting(
        "CAMPAIGNS_DNS_RESOLVER",
        "",
        "the nameserver the sending-domain checks ask (`IP:port`, `[IPv6]:port`, or an IP for port 53); unset: the "
        "system's resolver",
    )
    spf_include: str = setting(
        "CAMPAIGNS_SPF_INCLUDE",
        "_spf.mailblast.example.com",
        "the SPF record listing the senders' addresses, which each sending domain's SPF record includes",
    )
    return_path_target: str = setting(
        "CAMPAIGNS_RETURN_PATH_DOMAIN",
        "bounces.mailblast.example.com",
        "the platform's bounce domain (SENDER_RETURN_PATH_DOMAIN): each sending domain's return-path host is a "
        "CNAME to it",
    )
    dmarc_report_address: str = setting(
        "CAMPAIGNS_DMARC_REPORT_ADDRESS",
        "",
        "where the suggested DMARC records send aggregate reports; unset: `dmarc-reports@<the sending domain>`",
    )
    platform_from_domain: str = setting(
        "CAMPAIGNS_PLATFORM_FROM_DOMAIN",
        "",
        "the platform's own domain (the senders sign it with SENDER_DKIM_*, so it aligns), which every "
        "organisation may send From; unset: only each organisation's verified sending domains",
        parse=lambda text: text.strip().lower(),
    )

    time_zone: str = settings.TIME_ZONE.field()
    schedule_poll_seconds: float = setting(
        "CAMPAIGNS_SCHEDULE_POLL_SECONDS",
        5.0,
        "how often each campaigns process looks for scheduled campaigns that are due: one starts at most this "
        "long after its time (by one process only, whichever claims it first)",
    )

    def __post_init__(self) -> None:
        if self.dns_resolver:
            try:
                nameserver_address(self.dns_resolver)
            except ValueError as exc:
                raise ConfigError(f"CAMPAIGNS_DNS_RESOLVER: {exc}") from None

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing or malformed one is named."""
        return settings.read(cls)
