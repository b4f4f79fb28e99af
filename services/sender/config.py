"""The sender's settings, each declared once (services.common.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import settings
from services.common.nameserver import nameserver_address
from services.common.rpc import TlsFiles
from services.common.settings import ConfigError, setting
from services.sender.mime import MessageProblem, check_address

TLS_OPPORTUNISTIC = "opportunistic"
TLS_REQUIRED = "required"


def _lowercase(value: str) -> str:
    return value.strip().lower()


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the sender needs; build it with from_env() or directly in tests."""

    database_url: str = settings.DATABASE_URL.field()
    nats_url: str = settings.NATS_URL.field()
    nats_creds_file: str = settings.NATS_CREDS_FILE.field()
    nats_stream_replicas: int = settings.NATS_STREAM_REPLICAS.field()
    internal_key: bytes = settings.INTERNAL_KEY.field()
    return_path_domain: str = setting(
        "SENDER_RETURN_PATH_DOMAIN", doc="the VERP bounce domain of the envelope senders, served by bounce"
    )
    unsubscribe_url: str = setting(
        "SENDER_UNSUBSCRIBE_URL", doc="the unsubscribe base, e.g. `https://mail.example.com/u/`"
    )
    tracking_url: str = setting(
        "SENDER_TRACKING_URL",
        "",
        "the base of tracked links and open pixels, the console's public `/t/` (e.g. `https://mail.example.com/t/`); "
        "unset: no mail carries a tracked URL, whatever the campaigns say",
    )
    grpc_tls: TlsFiles
    message_id_domain: str = setting(
        "SENDER_MESSAGE_ID_DOMAIN", "", "the domain of Message-IDs; unset: the return-path domain"
    )
    grpc_bind: str = setting("SENDER_GRPC_BIND", "0.0.0.0:50054", "where the sender serves gRPC")
    health_bind: str = settings.HEALTH_BIND.field()
    metrics_bind: str = settings.METRICS_BIND.field()
    relay_host: str = setting("SENDER_RELAY_HOST", "", "a relay for all mail; unset: deliver to the domain's MX")
    relay_port: int = setting("SENDER_RELAY_PORT", 25, "the relay's port")
    dns_resolver: str = setting(
        "SENDER_DNS_RESOLVER",
        "",
        "the nameserver asked for MX records (`IP:port`, `[IPv6]:port`, or an IP for port 53); unset: the "
        "system's resolver. The MX hosts' addresses still come from the system",
    )
    mx_port: int = setting("SENDER_MX_PORT", 25, "the port of the hosts MX records name (tests point it at their sink)")
    tls: str = setting(
        "SENDER_TLS",
        TLS_OPPORTUNISTIC,
        f"`{TLS_OPPORTUNISTIC}` (STARTTLS whenever offered) or `{TLS_REQUIRED}`",
        parse=_lowercase,
    )
    tls_ca_file: str = setting("SENDER_TLS_CA_FILE", "", "the CAs to trust for STARTTLS; unset: the system's")
    dkim_domain: str = setting("SENDER_DKIM_DOMAIN", "", "the DKIM signing domain (d=); unset: no signature")
    dkim_selector: str = setting("SENDER_DKIM_SELECTOR", "", "the selector of the RSA key; unset: no RSA signature")
    dkim_key_file: str = setting("SENDER_DKIM_KEY_FILE", "", "the RSA private key, PEM")
    dkim_ed25519_selector: str = setting(
        "SENDER_DKIM_ED25519_SELECTOR", "", "the selector of the Ed25519 key; unset: no Ed25519 signature"
    )
    dkim_ed25519_key_file: str = setting("SENDER_DKIM_ED25519_KEY_FILE", "", "the Ed25519 private key, PEM")
    dkim_sealing_keys: tuple[bytes, ...] = settings.DKIM_SEALING_KEYS.field()
    concurrency: int = setting("SENDER_CONCURRENCY", 64, "deliveries at once per process")
    retry_base_seconds: float = setting("SENDER_RETRY_BASE_SECONDS", 60.0, "the first retry's delay, doubling after")
    retry_max_seconds: float = setting("SENDER_RETRY_MAX_SECONDS", 3600.0, "the longest delay between retries")
    give_up_seconds: float = setting(
        "SENDER_GIVE_UP_SECONDS", 345600.0, "how long a deferred delivery is retried (4 days) before it fails"
    )
    ack_wait_seconds: float = setting(
        "SENDER_ACK_WAIT_SECONDS",
        15.0,
        "how long a batch held by a vanished sender waits before another takes it (a live sender extends it every "
        "third of it)",
    )
    claim_seconds: float = setting(
        "SENDER_CLAIM_SECONDS",
        20.0,
        "a sender's lease on the recipients it is delivering, renewed every third of it while the sender lives: a "
        "killed sender's lapse after it, and only then may another sender deliver them (the one possible duplicate: "
        "mail in flight at the kill)",
    )
    smtp_timeout_seconds: float = setting(
        "SENDER_SMTP_TIMEOUT_SECONDS", 60.0, "how long one SMTP command may take before the delivery is deferred"
    )
    helo_name: str = setting("SENDER_HELO_NAME", "", "the name given in EHLO; unset: the message-id domain")
    system_return_path: str = setting(
        "SENDER_SYSTEM_RETURN_PATH",
        "",
        "the envelope sender of transactional mail; unset: `bounces@<return-path domain>`",
    )
    pause_recheck_seconds: float = setting(
        "SENDER_PAUSE_RECHECK_SECONDS",
        30.0,
        "how long a batch of a paused campaign waits before the sender looks at the campaign again",
    )

    def __post_init__(self) -> None:
        if self.tls not in (TLS_OPPORTUNISTIC, TLS_REQUIRED):
            raise ConfigError(f"SENDER_TLS={self.tls!r} must be '{TLS_OPPORTUNISTIC}' or '{TLS_REQUIRED}'")
        if self.dns_resolver:
            try:
                nameserver_address(self.dns_resolver)
            except ValueError as exc:
                raise ConfigError(f"SENDER_DNS_RESOLVER: {exc}") from None
        if self.concurrency < 1:
            raise ConfigError(f"SENDER_CONCURRENCY={self.concurrency} must be at least 1")
        if self.system_return_path:
            try:
                check_address("SENDER_SYSTEM_RETURN_PATH", self.system_return_path)
            except MessageProblem as exc:
                raise ConfigError(str(exc)) from None
        if not self.message_id_domain:
            object.__setattr__(self, "message_id_domain", self.return_path_domain)

    @property
    def batches_in_flight(self) -> int:
        """How many batches one process works on at once: enough to keep every delivery slot busy."""
        return max(2, self.concurrency // 32 + 1)

    @property
    def ehlo_name(self) -> str:
        """The host name announced in EHLO."""
        return self.helo_name or self.message_id_domain

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing or malformed one is named."""
        return settings.read(cls)
