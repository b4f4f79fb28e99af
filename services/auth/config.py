"""Settings of the auth service, each declared once (services.common.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from services.auth.sealing import parse_keys
from services.common import settings
from services.common.rpc import TlsFiles
from services.common.settings import setting


def _base_url(value: str) -> str:
    return value.rstrip("/")


@dataclass(frozen=True, kw_only=True)
class Config:
    """What the auth service needs to start."""

    database_url: str = settings.DATABASE_URL.field()
    internal_key: bytes = settings.INTERNAL_KEY.field()
    # Lockout and password-reset mails go out through the senders over NATS.
    nats_url: str = settings.NATS_URL.field()
    nats_creds_file: str = settings.NATS_CREDS_FILE.field()
    nats_stream_replicas: int = settings.NATS_STREAM_REPLICAS.field()
    totp_keys: tuple[bytes, ...] = setting(
        "AUTH_TOTP_KEYS",
        doc="Fernet keys (comma-separated; the first seals, the others still open: rotation) for the TOTP secrets "
        "in the database; auth reseals old ones at start",
        secret=True,
        parse=parse_keys,
    )
    grpc_tls: TlsFiles
    grpc_bind: str = setting("AUTH_GRPC_BIND", "0.0.0.0:50051", "where auth serves gRPC")
    health_bind: str = settings.HEALTH_BIND.field()
    metrics_bind: str = settings.METRICS_BIND.field()
    lockout_threshold: int = setting(
        "AUTH_LOCKOUT_THRESHOLD",
        5,
        "this many failed logins, each within AUTH_LOCKOUT_SECONDS of the one before, lock the login (mail "
        "`auth.lockout`); counted per client: a browser's device cookie (`__Host-mailblast-device`, signed by auth "
        "after a login) is locked only by its own failures, all other browsers together",
    )
    lockout_seconds: int = setting("AUTH_LOCKOUT_SECONDS", 1800, "how long a lock lasts after the last try")
    ip_failures_per_minute: int = setting(
        "AUTH_IP_FAILURES_PER_MINUTE",
        20,
        "after that many failed logins from one address in a minute by browsers without a device cookie, their "
        "logins from it are THROTTLED",
    )
    idle_timeout_seconds: int = setting("AUTH_IDLE_TIMEOUT_SECONDS", 1800, "a console session ends this long unused")
    absolute_timeout_seconds: int = setting(
        "AUTH_ABSOLUTE_TIMEOUT_SECONDS", 43200, "a console session ends this long after login"
    )
    reset_ttl_seconds: int = setting("AUTH_RESET_TTL_SECONDS", 3600, "how long a password-reset link works")
    invite_ttl_seconds: int = setting("AUTH_INVITE_TTL_SECONDS", 259200, "how long an invitation link works")
    console_url: str = setting(
        "AUTH_CONSOLE_URL",
        "http://127.0.0.1:8080",
        "the console's address: links are mailed as `<url>/reset/<token>`",
        parse=_base_url,
    )
    mail_from: str = setting("AUTH_MAIL_FROM", "no-reply@mailblast.example.com", "the sender of auth's mails")

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing or malformed one is named."""
        return settings.read(cls)
