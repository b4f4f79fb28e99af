"""Keyed hashes of addresses: what the suppression list keeps of an erased subscriber."""

from __future__ import annotations

import hashlib
import hmac


def email_hash(key: bytes, email: str) -> str:
    """HMAC-SHA256 of the lower-cased address under the internal key, hex."""
    return hmac.new(key, b"suppression:" + email.strip().lower().encode(), hashlib.sha256).hexdigest()
