"""Settings of the gateway, all from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, env_str


@dataclass(frozen=True)
class Config:
    """Where the gateway listens."""

    host: str = "127.0.0.1"
    port: int = 8080

    @classmethod
    def from_env(cls) -> Config:
        """Read GATEWAY_BIND ("host:port", port 0 for any free one)."""
        bind = env_str("GATEWAY_BIND", "127.0.0.1:8080")
        host, sep, port = bind.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"environment variable GATEWAY_BIND={bind!r} is not host:port")
        return cls(host=host.strip("[]"), port=int(port))
