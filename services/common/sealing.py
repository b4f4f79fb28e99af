"""Secrets sealed for the database (Fernet, with key rotation): a copy of a table alone does not give them away."""

from __future__ import annotations

import re
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

# What pyotp.random_base32 gives: a secret stored before sealing existed.
_PLAIN = re.compile(r"[A-Z2-7]+=*")


class SecretBox:
    """Fernet (AES-CBC with HMAC) under the first key; older keys still open what they sealed, for rotation."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("give at least one key")
        self._primary = Fernet(keys[0])
        self._all = MultiFernet([Fernet(k) for k in keys])

    def seal(self, secret: str) -> str:
        """The secret encrypted and authenticated, as text for a column."""
        return self._primary.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret a seal holds; raises InvalidToken when no key opens it (or it was tampered with)."""
        return self._all.decrypt(sealed.encode()).decode()

    def reseal(self, stored: str) -> str | None:
        """What to store instead: a plaintext secret sealed, an older key's seal resealed; else None.

        None also when no key opens it: start-up goes on, and logging in with a code fails (and says why
        in the log) until the key is back, while recovery codes still work.
        """
        if _PLAIN.fullmatch(stored):
            return self.seal(stored)
        try:
            self._primary.decrypt(stored.encode())
            return None
        except InvalidToken:
            pass
        try:
            return self._all.rotate(stored.encode()).decode()
        except InvalidToken:
            return None


def parse_keys(text: str) -> tuple[bytes, ...]:
    """Fernet keys from a comma- or space-separated text (first one seals); ValueError without a usable key."""
    keys = tuple(k.encode() for k in re.split(r"[\s,]+", text.strip()) if k)
    if not keys:
        raise ValueError("no key given")
    for position, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError:
            # Never echo the key itself: it is a secret.
            raise ValueError(f"key {position} is not a Fernet key (32 url-safe base64-encoded bytes)") from None
    return keys
