"""TOTP (RFC 6238) with replay refusal, and single-use recovery codes; no grpc, no nats."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import pyotp

ISSUER = "mailblast"
STEP_SECONDS = 30
RECOVERY_CODES = 10


def new_secret() -> str:
    """A random base32 secret (160 bits)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, login: str) -> str:
    """The otpauth:// URI an authenticator app reads from a QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=login, issuer_name=ISSUER)


def matching_step(secret: str, code: str, after_step: int, now: float | None = None) -> int | None:
    """The time step (now, or one either side for clock drift) whose code this is, if later than after_step."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = int((time.time() if now is None else now) // STEP_SECONDS)
    for step in (current - 1, current, current + 1):
        if step > after_step and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def code_at(secret: str, when: float) -> str:
    """The code for a moment (for tests and set-up screens)."""
    return pyotp.TOTP(secret).at(when)


def new_recovery_codes() -> list[str]:
    """Ten codes of 112 random bits each, as lower-case base32 in groups of four."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = base64.b32encode(secrets.token_bytes(14)).decode().rstrip("=").lower()
        codes.append("-".join(raw[i : i + 4] for i in range(0, len(raw), 4)))
    return codes


def hash_recovery_code(code: str) -> bytes:
    """The stored form of a recovery code, ignoring case, spaces and hyphens as typed."""
    canonical = "".join(c for c in code.lower() if c.isalnum())
    return hashlib.sha256(canonical.encode()).digest()
