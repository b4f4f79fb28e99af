"""Settings of the lists service, all from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import env_bytes_secret, env_int, env_str
from services.common.rpc import TlsFiles


@dataclass(frozen=True)
class Config:
    """What the lists service needs to start."""

    database_url: str
    nats_url: str
    internal_key: bytes
    # Mutual TLS for gRPC: this service's certificate, its key and the CA it trusts (MAILBLAST_TLS_*).
    grpc_tls: TlsFiles
    grpc_bind: str = "0.0.0.0:50052"
    # A plaintext listener answering only grpc.health.v1 (Kubernetes' gRPC probes); empty for none.
    health_bind: str = ""
    # Where to check users' bearer tokens; None accepts signed service identities only.
    auth_addr: str | None = None
    hard_bounce_threshold: int = 3
    # Tests drive the bounce consumer with run_once instead.
    consume_in_background: bool = True
    # Rows per committed import chunk (a resumed import restarts from the last one committed).
    import_batch_rows: int = 20000
    # Base of the public links in confirmation mails and form snippets (the gateway serves /c/ and /f/).
    public_url: str = "http://127.0.0.1:8080/"
    signup_rate_per_hour: int = 10
    # Double opt-in mails to one address: one per form within the window, at most the cap a day.
    confirm_window_seconds: int = 900
    confirm_daily_cap: int = 3
    # The .creds file of this process's NATS credential; empty: connect without (a server without auth).
    nats_creds_file: str = ""
    # How many NATS servers keep a copy of each stream this service creates (3 on a NATS cluster of 3).
    nats_stream_replicas: int = 1

    @classmethod
    def from_env(cls) -> Config:
        """Read DATABASE_URL, NATS_URL, MAILBLAST_INTERNAL_KEY(_FILE), MAILBLAST_TLS_*, AUTH_ADDR, LISTS_*."""
        return cls(
            database_url=env_str("DATABASE_URL"),
            nats_url=env_str("NATS_URL"),
            internal_key=env_bytes_secret("MAILBLAST_INTERNAL_KEY"),
            grpc_bind=env_str("LISTS_GRPC_BIND", "0.0.0.0:50052"),
            grpc_tls=TlsFiles.from_env(),
            health_bind=env_str("MAILBLAST_HEALTH_BIND", ""),
            auth_addr=env_str("AUTH_ADDR", "") or None,
            hard_bounce_threshold=env_int("LISTS_HARD_BOUNCE_THRESHOLD", 3),
            import_batch_rows=env_int("LISTS_IMPORT_BATCH_ROWS", 20000),
            public_url=env_str("LISTS_PUBLIC_URL", "http://127.0.0.1:8080/"),
            signup_rate_per_hour=env_int("LISTS_SIGNUP_RATE_PER_HOUR", 10),
            confirm_window_seconds=env_int("LISTS_CONFIRM_WINDOW_SECONDS", 900),
            confirm_daily_cap=env_int("LISTS_CONFIRM_DAILY_CAP", 3),
            nats_creds_file=env_str("NATS_CREDS_FILE", ""),
            nats_stream_replicas=env_int("NATS_STREAM_REPLICAS", 1),
        )
