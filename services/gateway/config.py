"""Settings of the gateway, all from the environment."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from services.common.config import ConfigError, env_bytes_secret, env_str
from services.common.rpc import TlsFiles


def parse_bind(name: str, value: str) -> tuple[str, int]:
    """Split "host:port" (port 0 for any free one), naming the variable when it is malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"environment variable {name}={value!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_public_url(name: str, value: str) -> str:
    """An https://host[:port][/path] base without query or fragment (no trailing slash), naming the variable."""
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not port_ok or parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"environment variable {name}={value!r} is not an https://host[:port] address")
    if "@" in parts.netloc:
        raise ConfigError(f"environment variable {name}={value!r} must not hold a user or password")
    return value.rstrip("/")


@dataclass(frozen=True)
class Config:
    """Where the gateway listens, which services it talks to, and its TLS material."""

    host: str = "127.0.0.1"
    port: int = 8080
    # The plain-HTTP listener that only redirects to HTTPS; None for none.
    http_host: str | None = None
    http_port: int = 0
    # The console's address as people reach it (the plain-HTTP listener redirects there); "" for the
    # HTTPS bind address.
    public_url: str = ""
    auth_addr: str = ""
    lists_addr: str = ""
    campaigns_addr: str = ""
    internal_key: bytes = b""
    # The gateway's client certificate for auth, lists and campaigns (MAILBLAST_TLS_*); required to start.
    grpc_tls: TlsFiles | None = None
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Where a self-signed certificate is made when none is given (development).
    tls_dir: str = ""
    dev_outbox_dir: str = ""
    # DNS TXT records of the development DKIM keys ({"mb1._domainkey.example.com.": "v=DKIM1; ..."}).
    dev_dkim_records: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Config:
        """Read GATEWAY_*, AUTH_ADDR, LISTS_ADDR, CAMPAIGNS_ADDR, MAILBLAST_INTERNAL_KEY(_FILE) and MAILBLAST_TLS_*."""
        public_url = env_str("GATEWAY_PUBLIC_URL", "")
        host, port = parse_bind("GATEWAY_BIND", env_str("GATEWAY_BIND", "127.0.0.1:8080"))
        http_bind = env_str("GATEWAY_HTTP_BIND", "")
        http_host, http_port = parse_bind("GATEWAY_HTTP_BIND", http_bind) if http_bind else (None, 0)
        records_text = env_str("GATEWAY_DEV_DKIM_RECORDS", "")
        try:
            records = json.loads(records_text) if records_text else {}
        except ValueError:
            raise ConfigError("environment variable GATEWAY_DEV_DKIM_RECORDS is not a JSON object") from None
        return cls(
            host=host,
            port=port,
            http_host=http_host,
            http_port=http_port,
            public_url=parse_public_url("GATEWAY_PUBLIC_URL", public_url) if public_url else "",
            auth_addr=env_str("AUTH_ADDR"),
            lists_addr=env_str("LISTS_ADDR"),
            campaigns_addr=env_str("CAMPAIGNS_ADDR"),
            internal_key=env_bytes_secret("MAILBLAST_INTERNAL_KEY"),
            grpc_tls=TlsFiles.from_env(),
            tls_cert_file=env_str("GATEWAY_TLS_CERT_FILE", ""),
            tls_key_file=env_str("GATEWAY_TLS_KEY_FILE", ""),
            tls_dir=env_str("GATEWAY_TLS_DIR", ""),
            dev_outbox_dir=env_str("GATEWAY_DEV_OUTBOX_DIR", ""),
            dev_dkim_records=records,
        )

    def flask_secret(self) -> bytes:
        """The key Flask signs its session cookie with: derived from the internal key, the same on every replica."""
        return hmac.new(self.internal_key, b"mailblast-gateway-flask-session", hashlib.sha256).digest()

    def tls_files(self) -> tuple[Path, Path]:
        """The certificate and key to serve: the configured ones, else a self-signed pair made once."""
        if self.tls_cert_file or self.tls_key_file:
            if not (self.tls_cert_file and self.tls_key_file):
                raise ConfigError("set both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE, or neither")
            return Path(self.tls_cert_file), Path(self.tls_key_file)
        import tempfile

        from dev.tls import make_self_signed

        directory = Path(self.tls_dir) if self.tls_dir else Path(tempfile.gettempdir()) / "mailblast-gateway-tls"
        return make_self_signed(directory, "localhost")
