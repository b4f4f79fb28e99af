"""API tokens: `mb_<prefix>_<secret>`, of which only the SHA-256 of the secret is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from services.common.errors import Unauthenticated

_MARKER = "mb"
_PREFIX_LENGTH = 8


@dataclass(frozen=True)
class IssuedToken:
    """A new token: the full text to hand over once, and what is stored about it."""

    text: str
    prefix: str
    secret_hash: bytes


def issue() -> IssuedToken:
    """Make a new random token."""
    prefix = secrets.token_hex(_PREFIX_LENGTH // 2)
    secret = secrets.token_urlsafe(32)
    return IssuedToken(f"{_MARKER}_{prefix}_{secret}", prefix, hash_secret(secret))


def hash_secret(secret: str) -> bytes:
    """The stored form of a token secret."""
    return hashlib.sha256(secret.encode()).digest()


def parse(text: str) -> tuple[str, bytes]:
    """Return (prefix, secret hash) of a presented token; refuse anything not shaped like one."""
    parts = text.split("_", 2)
    if (
        len(parts) != 3
        or parts[0] != _MARKER
        or len(parts[1]) != _PREFIX_LENGTH
        or len(parts[2]) < 32
        or not text.isascii()
    ):
        raise Unauthenticated("malformed API token: expected 'mb_<prefix>_<secret>' as issued by mailblast")
    return parts[1], hash_secret(parts[2])
