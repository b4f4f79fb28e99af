"""Password rules (ASVS 5.0 6.2) and argon2id hashing; no grpc, no nats."""

from __future__ import annotations

import asyncio
import re
import threading
import unicodedata
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from services.common.errors import InvalidArgument

MIN_LENGTH = 8
MAX_LENGTH = 128
# zxcvbn's score of 3 means "safely unguessable: moderate protection from an offline slow-hash attack"
# (over 10^8 guesses). Online guessing is already slowed by the lockout; 3 is what a stolen copy of the
# argon2id hashes needs, and zxcvbn's own advice for a minimum. 4 would refuse many memorable passphrases.
MIN_SCORE = 3
# zxcvbn's own limit: its matching grows fast with length (128 random characters take most of a second).
SCORED_LENGTH = 72
# Words an attacker tries first against any account here.
PRODUCT_WORDS = ("mailblast", "blastmail", "ブラストメール")
_WORDS = re.compile(r"[^\W_]+")
PERSONAL_WARNING = "It is built on your login, email address or organisation, or on the product's name."
# zxcvbn keeps the user inputs of the call under way in a module-level dict: one call at a time.
_zxcvbn_lock = threading.Lock()

# argon2-cffi's defaults are RFC 9106's second recommended option for argon2id (t=3, m=64 MiB, p=4),
# above OWASP's minimum.
_hasher = PasswordHasher()


def normalize(password: str) -> str:
    """The form a password is checked and hashed in: NFKC, so one text typed two ways matches (NIST 800-63B)."""
    return unicodedata.normalize("NFKC", password)


def context_words(login: str, email: str, organization: str) -> list[str]:
    """What an attacker knows of this account: login, address, organisation, product name, and their words."""
    local, _, domain = email.partition("@")
    words: list[str] = []
    for text in (login, email, local, domain, organization, *PRODUCT_WORDS):
        words.append(text)
        words.extend(_WORDS.findall(text))
    # Shorter words would mark every pair of letters as "known", which says nothing.
    return list(dict.fromkeys(w.casefold() for w in words if len(w) >= 3))


def strength(password: str, context: list[str]) -> tuple[int, list[str]]:
    """zxcvbn's score (0-4) of the password and its English feedback: the warning, then the suggestions."""
    with _zxcvbn_lock:
        result = zxcvbn(password[:SCORED_LENGTH], user_inputs=context)
    feedback = result["feedback"]
    advice = [t for t in (feedback["warning"], *feedback["suggestions"]) if t]
    if result["score"] < MIN_SCORE and any(m.get("dictionary_name") == "user_inputs" for m in result["sequence"]):
        # zxcvbn has no warning of its own for these.
        advice.insert(0, PERSONAL_WARNING)
    return result["score"], advice


def check_new(password: str, login: str, email: str, organization: str = "") -> str:
    """Return the normalised password if it meets the rules, else refuse saying which one failed and why."""
    text = normalize(password)
    if len(text) < MIN_LENGTH:
        raise InvalidArgument("password is shorter than %(limit)s characters: choose a longer one", limit=MIN_LENGTH)
    if len(text) > MAX_LENGTH:
        raise InvalidArgument("password is longer than %(limit)s characters: choose a shorter one", limit=MAX_LENGTH)
    folded = text.casefold()
    personal = {login.casefold(), email.casefold(), email.split("@", 1)[0].casefold()}
    if folded in personal:
        raise InvalidArgument("password must not be your login or email address: choose another")
    score, feedback = strength(text, context_words(login, email, organization))
    if score < MIN_SCORE:
        # zxcvbn's texts travel as templates of their own, so the console shows each in the user's language.
        parts = [part for advice in feedback for part in (" ", advice)][1:]
        raise InvalidArgument(
            "password is too easy to guess (strength %(score)s of 4, %(minimum)s needed): ",
            *parts,
            score=score,
            minimum=MIN_SCORE,
        )
    return text


async def check_new_async(password: str, login: str, email: str, organization: str = "") -> str:
    """check_new in a worker thread: zxcvbn can take a tenth of a second on a long password."""
    return await asyncio.to_thread(check_new, password, login, email, organization)


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
