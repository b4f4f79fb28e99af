"""Settings of the auth service, all from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import env_bytes_secret, env_str


@dataclass(frozen=True)
class Config:
    """What the auth service needs to start."""

    database_url: str
    internal_key: bytes
    grpc_bind: str = "0.0.0.0:50051"

    @classmethod
    def from_env(cls) -> Config:
        """Read DATABASE_URL, MAILBLAST_INTERNAL_KEY(_FILE) and AUTH_GRPC_BIND."""
        return cls(
            database_url=env_str("DATABASE_URL"),
            internal_key=env_bytes_secret("MAILBLAST_INTERNAL_KEY"),
            grpc_bind=env_str("AUTH_GRPC_BIND", "0.0.0.0:50051"),
        )
