"""Settings of the bounce service, all from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import env_bytes_secret, env_float, env_int, env_str
from services.common.rpc import TlsFiles


@dataclass(frozen=True)
class Config:
    """What the bounce service needs to start."""

    database_url: str
    nats_url: str
    internal_key: bytes
    # Mutual TLS for gRPC: this service's certificate, its key and the CA it trusts (MAILBLAST_TLS_*).
    grpc_tls: TlsFiles
    auth_addr: str = ""
    grpc_bind: str = "0.0.0.0:50055"
    # A plaintext listener answering only grpc.health.v1 (Kubernetes' gRPC probes); empty for none.
    health_bind: str = ""
    smtp_bind: str = "0.0.0.0:2525"
    smtp_hostname: str = "bounce.mailblast.example.com"
    max_message_bytes: int = 10 * 1024 * 1024
    # Sessions open at once, in all and from one client address; more are told 421 and closed.
    max_connections: int = 100
    max_connections_per_ip: int = 10
    # Time allowed between commands (RFC 5321 4.5.3.2.7: at least five minutes), and for all of DATA.
    idle_timeout_seconds: float = 300.0
    data_timeout_seconds: float = 600.0
    # The .creds file of this process's NATS credential; empty: connect without (a server without auth).
    nats_creds_file: str = ""
    # How many NATS servers keep a copy of each stream this service creates (3 on a NATS cluster of 3).
    nats_stream_replicas: int = 1

    @classmethod
    def from_env(cls) -> Config:
        """Read DATABASE_URL, NATS_URL, MAILBLAST_INTERNAL_KEY(_FILE), MAILBLAST_TLS_*, AUTH_ADDR, BOUNCE_*."""
        return cls(
            database_url=env_str("DATABASE_URL"),
            nats_url=env_str("NATS_URL"),
            internal_key=env_bytes_secret("MAILBLAST_INTERNAL_KEY"),
            auth_addr=env_str("AUTH_ADDR", ""),
            grpc_bind=env_str("BOUNCE_GRPC_BIND", "0.0.0.0:50055"),
            grpc_tls=TlsFiles.from_env(),
            health_bind=env_str("MAILBLAST_HEALTH_BIND", ""),
            smtp_bind=env_str("BOUNCE_SMTP_BIND", "0.0.0.0:2525"),
            smtp_hostname=env_str("BOUNCE_SMTP_HOSTNAME", "bounce.mailblast.example.com"),
            max_message_bytes=env_int("BOUNCE_MAX_MESSAGE_BYTES", 10 * 1024 * 1024),
            max_connections=env_int("BOUNCE_MAX_CONNECTIONS", 100),
            max_connections_per_ip=env_int("BOUNCE_MAX_CONNECTIONS_PER_IP", 10),
            idle_timeout_seconds=env_float("BOUNCE_IDLE_TIMEOUT_SECONDS", 300.0),
            data_timeout_seconds=env_float("BOUNCE_DATA_TIMEOUT_SECONDS", 600.0),
            nats_creds_file=env_str("NATS_CREDS_FILE", ""),
            nats_stream_replicas=env_int("NATS_STREAM_REPLICAS", 1),
        )
