"""Settings of the campaigns service."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import env_bytes_secret, env_int, env_str
from services.common.rpc import TlsFiles


@dataclass(frozen=True)
class Config:
    """Everything the campaigns service reads from the environment."""

    database_url: str
    nats_url: str
    internal_key: bytes
    lists_addr: str
    # Mutual TLS for gRPC: this service's certificate, its key and the CA it trusts (MAILBLAST_TLS_*).
    grpc_tls: TlsFiles
    auth_addr: str = ""
    grpc_bind: str = "0.0.0.0:50053"
    # A plaintext listener answering only grpc.health.v1 (Kubernetes' gRPC probes); empty for none.
    health_bind: str = ""
    batch_size: int = 500
    # The .creds file of this process's NATS credential; empty: connect without (a server without auth).
    nats_creds_file: str = ""
    # How many NATS servers keep a copy of each stream this service creates (3 on a NATS cluster of 3).
    nats_stream_replicas: int = 1

    @classmethod
    def from_env(cls) -> Config:
        """Read CAMPAIGNS_* and the shared variables."""
        return cls(
            database_url=env_str("DATABASE_URL"),
            nats_url=env_str("NATS_URL"),
            internal_key=env_bytes_secret("MAILBLAST_INTERNAL_KEY"),
            lists_addr=env_str("LISTS_ADDR"),
            auth_addr=env_str("AUTH_ADDR", ""),
            grpc_bind=env_str("CAMPAIGNS_GRPC_BIND", "0.0.0.0:50053"),
            grpc_tls=TlsFiles.from_env(),
            health_bind=env_str("MAILBLAST_HEALTH_BIND", ""),
            batch_size=env_int("CAMPAIGNS_BATCH_SIZE", 500),
            nats_creds_file=env_str("NATS_CREDS_FILE", ""),
            nats_stream_replicas=env_int("NATS_STREAM_REPLICAS", 1),
        )
