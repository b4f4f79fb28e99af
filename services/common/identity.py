"""Who is calling: principals, the signed identity services pass to each other, and scope checks."""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field, replace

from services.common.errors import PermissionDenied, Unauthenticated

# Metadata keys on gRPC calls.
IDENTITY_HEADER = "x-mailblast-identity"
AUTHORIZATION_HEADER = "authorization"
# A process's certificate names it with one URI SAN, spiffe://mailblast/<name> (a SPIFFE ID, which
# cert-manager's Certificate writes with `uris:` and gRPC reports as the peer's `peer_spiffe_id`).
CERTIFICATE_IDENTITY_PREFIX = "spiffe://mailblast/"

ROLES = ("owner", "admin", "editor", "viewer")
SCOPES = ("read", "send", "admin")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, always bound to one organisation."""

    organization_id: int
    user_id: int = 0
    scopes: tuple[str, ...] = field(default_factory=tuple)
    role: str = ""
    # The service acting for the organisation ("campaigns", "dev-run"), empty for a user's own call.
    service: str = ""
    # The API token the caller presented (0 for a console session): the audit log names it.
    token_id: int = 0

    def has_scope(self, scope: str) -> bool:
        """True when the principal may act with this scope ("admin" implies the others)."""
        return scope in self.scopes or "admin" in self.scopes

    def acting_as(self, service: str) -> Principal:
        """The same principal, marked as relayed by a service."""
        return replace(self, service=service)


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current_principal() -> Principal:
    """Return the caller of the request being served; refuse when there is none."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no caller identity: send 'authorization: Bearer <API token>'")
    return principal


def peek_principal() -> Principal | None:
    """Return the current principal, or None outside a request."""
    return _current.get()


def set_principal(principal: Principal | None) -> contextvars.Token:
    """Make a principal current for this task; returns a token to reset it."""
    return _current.set(principal)


def reset_principal(token: contextvars.Token) -> None:
    """Undo set_principal."""
    _current.reset(token)


def require_scope(scope: str) -> Principal:
    """Return the current principal if it holds the scope, else refuse."""
    principal = current_principal()
    if not principal.has_scope(scope):
        raise PermissionDenied("this call needs the %(scope)r scope", scope=scope)
    return principal


def require_service() -> Principal:
    """Return the current principal if it is another mailblast service, else refuse."""
    principal = current_principal()
    if not principal.service:
        raise PermissionDenied("only mailblast services may call this")
    return principal


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def certificate_identity_uri(name: str) -> str:
    """The URI SAN a certificate of this mailblast identity ("auth", "cli", ...) carries."""
    return f"{CERTIFICATE_IDENTITY_PREFIX}{name}"


class IdentitySigner:
    """Signs and checks the identity one service passes to another (HMAC-SHA256 with a shared key).

    An assertion names the service it is meant for (its audience) and the service that issued it
    (`Principal.service`, which the callee compares with the caller's certificate), and lives 60 s:
    long enough for a call and its retries, too short to be worth keeping.
    """

    def __init__(self, key: bytes, ttl_seconds: int = 60) -> None:
        if len(key) < 16:
            raise ValueError("the internal key must be at least 16 bytes")
        self._key = key
        self._ttl = ttl_seconds

    def sign(self, principal: Principal, audience: str) -> str:
        """Return a compact signed assertion of the principal for the service `audience`, valid for the TTL."""
        body = json.dumps(
            {
                "aud": audience,
                "o": principal.organization_id,
                "u": principal.user_id,
                "s": list(principal.scopes),
                "r": principal.role,
                "svc": principal.service,
                "t": principal.token_id,
                "exp": int(time.time()) + self._ttl,
            },
            separators=(",", ":"),
        ).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return f"{_b64(body)}.{_b64(mac)}"

    def verify(self, assertion: str, audience: str) -> Principal:
        """Return the principal of an assertion meant for `audience`; refuse forged, expired or misdirected ones."""
        try:
            body_text, mac_text = assertion.split(".", 1)
            body = _unb64(body_text)
            mac = _unb64(mac_text)
        except ValueError:
            raise Unauthenticated("malformed service identity") from None
        if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()):
            raise Unauthenticated("service identity signature does not verify")
        data = json.loads(body)
        if data["exp"] < time.time():
            raise Unauthenticated("service identity has expired")
        if data.get("aud") != audience:
            # An assertion taken from a call to one service must not open another.
            raise Unauthenticated(
                "service identity is meant for %(audience)s, not %(service)s",
                audience=str(data.get("aud") or "no service"),
                service=audience,
            )
        return Principal(
            organization_id=int(data["o"]),
            user_id=int(data["u"]),
            scopes=tuple(data["s"]),
            role=data["r"],
            service=data["svc"],
            token_id=int(data.get("t", 0)),
        )
