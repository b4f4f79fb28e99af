"""Settings of the gateway, each declared once (services.common.settings)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.common import settings
from services.common.rpc import TlsFiles
from services.common.settings import setting


def split_bind(value: str) -> tuple[str, int]:
    """Split "host:port" (port 0 for any free one); ValueError when it is not that."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("is not host:port")
    return host.strip("[]"), int(port)


def _bind(value: str) -> str:
    split_bind(value)
    return value


def _public_url(value: str) -> str:
    """An https://host[:port][/path] base without query or fragment (no trailing slash)."""
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not port_ok or parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("is not an https://host[:port] address")
    if "@" in parts.netloc:
        raise ValueError("must not hold a user or password")
    return value.rstrip("/")


def _proxy_count(value: str) -> int:
    if not value.isdigit() or int(value) > 10:
        raise ValueError("is not a number of proxies from 0 to 10")
    return int(value)


def _json_object(value: str) -> dict[str, str]:
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError("is not a JSON object")
    return parsed


@dataclass(frozen=True, kw_only=True)
class Config:
    """Where the gateway listens, which services it talks to, and its TLS material."""

    bind: str = setting("GATEWAY_BIND", "127.0.0.1:8080", "where the console serves HTTPS", parse=_bind)
    http_bind: str = setting(
        "GATEWAY_HTTP_BIND",
        "",
        "a plain-HTTP listener answering every request with a 308 to HTTPS (and `/healthz`); unset: none",
        parse=_bind,
    )
    public_url: str = setting(
        "GATEWAY_PUBLIC_URL",
        "",
        "the `https://host[:port]` the plain-HTTP listener redirects to, never the request's Host; unset: the "
        "HTTPS bind address (`localhost` for a wildcard bind). `make run` sets the console's address",
        parse=_public_url,
    )
    auth_addr: str = settings.AUTH_ADDR.field(required=True)
    lists_addr: str = settings.LISTS_ADDR.field(required=True)
    campaigns_addr: str = settings.CAMPAIGNS_ADDR.field(required=True)
    time_zone: str = settings.TIME_ZONE.field()
    internal_key: bytes = settings.INTERNAL_KEY.field()
    # The gateway's client certificate for auth, lists and campaigns.
    grpc_tls: TlsFiles
    tls_cert_file: str = setting(
        "GATEWAY_TLS_CERT_FILE",
        "",
        "the console's HTTPS certificate, PEM (with GATEWAY_TLS_KEY_FILE); unset: a self-signed pair made once in "
        "GATEWAY_TLS_DIR. The console is always HTTPS",
    )
    tls_key_file: str = setting("GATEWAY_TLS_KEY_FILE", "", "the key of GATEWAY_TLS_CERT_FILE, PEM")
    tls_dir: str = setting(
        "GATEWAY_TLS_DIR", "", "where the self-signed pair is made (development); unset: `<tmp>/mailblast-gateway-tls`"
    )
    trusted_proxies: int = setting(
        "GATEWAY_TRUSTED_PROXIES",
        0,
        "how many reverse proxies in front of the console each append the client's address to "
        "X-Forwarded-For (an Ingress: 1); the client's address (logins' lockouts and throttles, the audit log) "
        "is read that many hops from the end of the header, so a client cannot name its own. 0: the TCP peer",
        parse=_proxy_count,
    )
    dev_outbox_dir: str = setting(
        "GATEWAY_DEV_OUTBOX_DIR", "", "the catcher's outbox to show in the console; unset: no outbox page"
    )
    dev_dkim_records: Mapping[str, str] = setting(
        "GATEWAY_DEV_DKIM_RECORDS",
        {},
        'the development DKIM TXT records the outbox checks with, JSON (`{"mb1._domainkey.example.com.": '
        '"v=DKIM1; ..."}`)',
        parse=_json_object,
    )

    @property
    def host(self) -> str:
        """The HTTPS listener's host."""
        return split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        """The HTTPS listener's port (0: any free one)."""
        return split_bind(self.bind)[1]

    @property
    def http_host(self) -> str | None:
        """The redirecting listener's host; None when there is none."""
        return split_bind(self.http_bind)[0] if self.http_bind else None

    @property
    def http_port(self) -> int:
        """The redirecting listener's port."""
        return split_bind(self.http_bind)[1] if self.http_bind else 0

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing or malformed one is named."""
        return settings.read(cls)

    def flask_secret(self) -> bytes:
        """The key Flask signs its session cookie with: derived from the internal key, the same on every replica."""
        return hmac.new(self.internal_key, b"mailblast-gateway-flask-session", hashlib.sha256).digest()
