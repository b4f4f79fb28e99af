"""Settings of the auth service, all from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.auth.sealing import parse_keys
from services.common.config import ConfigError, env_bytes_secret, env_int, env_str
from services.common.rpc import TlsFiles


@dataclass(frozen=True)
class Config:
    """What the auth service needs to start."""

    database_url: str
    internal_key: bytes
    # Lockout and password-reset mails go out through the senders over NATS.
    nats_url: str
    # Fernet keys sealing TOTP secrets in the database; the first seals, the others still open (rotation).
    totp_keys: tuple[bytes, ...]
    # Mutual TLS for gRPC: this service's certificate, its key and the CA it trusts (MAILBLAST_TLS_*).
    grpc_tls: TlsFiles
    grpc_bind: str = "0.0.0.0:50051"
    # A plaintext listener answering only grpc.health.v1 (Kubernetes' gRPC probes); empty for none.
    health_bind: str = ""
    lockout_threshold: int = 5
    lockout_seconds: int = 1800
    ip_failures_per_minute: int = 20
    idle_timeout_seconds: int = 1800
    absolute_timeout_seconds: int = 43200
    reset_ttl_seconds: int = 3600
    invite_ttl_seconds: int = 259200
    console_url: str = "http://127.0.0.1:8080"
    mail_from: str = "no-reply@mailblast.example.com"
    # The .creds file of this process's NATS credential; empty: connect without (a server without auth).
    nats_creds_file: str = ""
    # How many NATS servers keep a copy of each stream this service creates (3 on a NATS cluster of 3).
    nats_stream_replicas: int = 1

    @classmethod
    def from_env(cls) -> Config:
        """Read DATABASE_URL, NATS_URL, MAILBLAST_INTERNAL_KEY(_FILE) and _TLS_*, AUTH_TOTP_KEYS(_FILE), AUTH_*."""
        try:
            totp_keys = parse_keys(env_bytes_secret("AUTH_TOTP_KEYS").decode())
        except ValueError as exc:
            raise ConfigError(f"AUTH_TOTP_KEYS: {exc}") from None
        return cls(
            database_url=env_str("DATABASE_URL"),
            internal_key=env_bytes_secret("MAILBLAST_INTERNAL_KEY"),
            nats_url=env_str("NATS_URL"),
            totp_keys=totp_keys,
            grpc_bind=env_str("AUTH_GRPC_BIND", "0.0.0.0:50051"),
            grpc_tls=TlsFiles.from_env(),
            health_bind=env_str("MAILBLAST_HEALTH_BIND", ""),
            lockout_threshold=env_int("AUTH_LOCKOUT_THRESHOLD", 5),
            lockout_seconds=env_int("AUTH_LOCKOUT_SECONDS", 1800),
            ip_failures_per_minute=env_int("AUTH_IP_FAILURES_PER_MINUTE", 20),
            idle_timeout_seconds=env_int("AUTH_IDLE_TIMEOUT_SECONDS", 1800),
            absolute_timeout_seconds=env_int("AUTH_ABSOLUTE_TIMEOUT_SECONDS", 43200),
            reset_ttl_seconds=env_int("AUTH_RESET_TTL_SECONDS", 3600),
            invite_ttl_seconds=env_int("AUTH_INVITE_TTL_SECONDS", 259200),
            console_url=env_str("AUTH_CONSOLE_URL", "http://127.0.0.1:8080").rstrip("/"),
            mail_from=env_str("AUTH_MAIL_FROM", "no-reply@mailblast.example.com"),
            nats_creds_file=env_str("NATS_CREDS_FILE", ""),
            nats_stream_replicas=env_int("NATS_STREAM_REPLICAS", 1),
        )
