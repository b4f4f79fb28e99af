"""Device cookies (OWASP "Slow down online guessing attacks with device cookies"); no grpc, no nats.

A browser that has logged in to a login before carries `<login>.<nonce>.<signature>`, signed by auth.
Failures from it count against that cookie alone, so strangers locking out a login (or an address) do
not lock out its owner's own browsers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_VERSION = "d1"
_NONCE_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DeviceCookies:
    """Issues and checks device cookies with a key only auth holds."""

    def __init__(self, internal_key: bytes) -> None:
        # A key of its own, derived from the internal key, so a device cookie is never valid as anything else.
        self._key = hmac.new(internal_key, b"mailblast-auth-device-cookie", hashlib.sha256).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def issue(self, login: str) -> str:
        """A new cookie value naming the login, with a fresh nonce (only cookie-safe characters)."""
        body = f"{_VERSION}.{_b64(login.encode())}.{_b64(secrets.token_bytes(_NONCE_BYTES))}"
        return f"{body}.{self._mac(body)}"

    def nonce(self, cookie: str, login: str) -> str | None:
        """The nonce of a cookie that auth signed for this login; None for anything else."""
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or len(cookie) > 512:
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3].encode(), self._mac(body).encode()):
            return None
        try:
            named = _unb64(parts[1]).decode()
        except ValueError:
            return None
        return parts[2] if hmac.compare_digest(named.encode(), login.encode()) else None
