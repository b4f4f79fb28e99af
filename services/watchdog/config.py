"""Settings of the watchdog, each declared once (services.common.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import settings
from services.common.rpc import TlsFiles
from services.common.settings import setting


def parse_targets(text: str) -> tuple[tuple[str, str], ...]:
    """`name=host:port,...`: the services whose gRPC health the watchdog asks."""
    targets = []
    for part in text.split(","):
        name, sep, address = part.strip().partition("=")
        if not part.strip():
            continue
        if not sep or not name or ":" not in address:
            raise ValueError(f"has {part.strip()!r}: write each service as name=host:port, e.g. lists=lists:50052")
        targets.append((name.strip(), address.strip()))
    if not targets:
        raise ValueError("names no service: write name=host:port,...")
    return tuple(targets)


@dataclass(frozen=True, kw_only=True)
class Config:
    """What the watchdog needs to start."""

    targets: tuple[tuple[str, str], ...] = setting(
        "WATCHDOG_TARGETS",
        doc="the services to watch, `name=host:port` comma-separated (their gRPC addresses; the health check "
        "goes over mutual TLS with the certificate of `watchdog`)",
        parse=parse_targets,
    )
    operators: tuple[str, ...] = setting(
        "WATCHDOG_OPERATORS", doc="the addresses alerts and all-clears are mailed to, comma-separated"
    )
    smtp_host: str = setting(
        "WATCHDOG_SMTP_HOST",
        doc="the mail server the watchdog hands its mail to (not the senders: an alert must go out when they are down)",
    )
    smtp_port: int = setting("WATCHDOG_SMTP_PORT", 25, "its port")
    smtp_tls_ca_file: str = setting(
        "WATCHDOG_SMTP_TLS_CA_FILE", "", "the CAs to trust for STARTTLS (used whenever offered); unset: the system's"
    )
    mail_from: str = setting("WATCHDOG_MAIL_FROM", "watchdog@mailblast.example.com", "the sender of its mail")
    interval_seconds: float = setting("WATCHDOG_INTERVAL_SECONDS", 30.0, "how often it looks")
    down_after_seconds: float = setting(
        "WATCHDOG_DOWN_AFTER_SECONDS", 60.0, "how long a service fails its health check before the alert"
    )
    queue_wait_seconds: float = setting(
        "WATCHDOG_QUEUE_WAIT_SECONDS", 900.0, "how long the senders' backlog may stand still before the alert"
    )
    rate_window_seconds: float = setting(
        "WATCHDOG_RATE_WINDOW_SECONDS", 3600.0, "the window bounce and complaint rates are taken over"
    )
    min_deliveries: int = setting(
        "WATCHDOG_MIN_DELIVERIES", 100, "deliveries the window must hold before a rate is judged"
    )
    bounce_rate: float = setting("WATCHDOG_BOUNCE_RATE", 0.05, "the bounce rate (bounces per delivery) to alert over")
    complaint_rate: float = setting("WATCHDOG_COMPLAINT_RATE", 0.003, "the complaint rate to alert over")
    nats_url: str = settings.NATS_URL.field()
    nats_creds_file: str = settings.NATS_CREDS_FILE.field()
    nats_stream_replicas: int = settings.NATS_STREAM_REPLICAS.field()
    grpc_tls: TlsFiles
    metrics_bind: str = settings.METRICS_BIND.field()

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing or malformed one is named."""
        return settings.read(cls)
