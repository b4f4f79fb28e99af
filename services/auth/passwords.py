"""Password rules (ASVS 5.0 6.2) and argon2id hashing; no grpc, no nats."""

from __future__ import annotations

import asyncio
import unicodedata
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from services.common.errors import InvalidArgument

MIN_LENGTH = 8
MAX_LENGTH = 128

# argon2-cffi's defaults are RFC 9106's second recommended option for argon2id (t=3, m=64 MiB, p=4),
# above OWASP's minimum.
_hasher = PasswordHasher()


@cache
def _common() -> frozenset[str]:
    # zxcvbn ships the 30,000 most common passwords of a large breach corpus (Burnett's 10M list), lower-case.
    return frozenset(FREQUENCY_LISTS["passwords"])


def normalize(password: str) -> str:
    """The form a password is checked and hashed in: NFKC, so one text typed two ways matches (NIST 800-63B)."""
    return unicodedata.normalize("NFKC", password)


def check_new(password: str, login: str, email: str) -> str:
    """Return the normalised password if it meets the rules, else refuse saying which one failed."""
    text = normalize(password)
    if len(text) < MIN_LENGTH:
        raise InvalidArgument("password is shorter than %(limit)s characters: choose a longer one", limit=MIN_LENGTH)
    if len(text) > MAX_LENGTH:
        raise InvalidArgument("password is longer than %(limit)s characters: choose a shorter one", limit=MAX_LENGTH)
    folded = text.casefold()
    if folded in _common():
        raise InvalidArgument("password is one of the most common passwords found in breaches: choose another")
    personal = {login.casefold(), email.casefold(), email.split("@", 1)[0].casefold()}
    if folded in personal:
        raise InvalidArgument("password must not be your login or email address: choose another")
    return text


def hash_password(normalized: str) -> str:
    """The argon2id hash (PHC string, salt included) to store."""
    return _hasher.hash(normalized)


def verify(stored_hash: str, password: str) -> bool:
    """True when the password matches the stored hash."""
    try:
        return _hasher.verify(stored_hash, normalize(password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    return _hasher.check_needs_rehash(stored_hash)


@cache
def dummy_hash() -> str:
    """A hash to verify against for unknown logins, so they cost the same time as known ones."""
    return _hasher.hash("mailblast-no-such-user")


async def verify_async(stored_hash: str | None, password: str) -> bool:
    """Verify in a worker thread (argon2 takes tens of milliseconds); a missing hash verifies the dummy and fails."""
    if stored_hash is None:
        await asyncio.to_thread(verify, dummy_hash(), password)
        return False
    return await asyncio.to_thread(verify, stored_hash, password)


async def hash_async(normalized: str) -> str:
    """Hash in a worker thread."""
    return await asyncio.to_thread(hash_password, normalized)
