"""Sealing TOTP secrets for the database: round trip, rotation, old plaintext, and keys that never show."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet, InvalidToken

from services.auth import totp
from services.auth.config import Config
from services.common.sealing import SecretBox, parse_keys
from services.common.settings import ConfigError
from tests.support.mtls import default_pki


def test_a_seal_hides_the_secret_opens_to_it_and_refuses_tampering():
    # Scenario: the stored text does not contain the secret and differs each time (random IV); it opens
    # back to the secret; one changed character makes it refuse instead of yielding another secret.
    box = SecretBox((Fernet.generate_key(),))
    secret = totp.new_secret()
    first, second = box.seal(secret), box.seal(secret)
    assert secret not in first and first != second
    assert box.open(first) == secret == box.open(second)
    tampered = first[:-5] + ("A" if first[-5] != "A" else "B") + first[-4:]
    with pytest.raises(InvalidToken):
        box.open(tampered)


def test_reseal_seals_plaintext_rotates_old_keys_and_leaves_current_or_lost_ones():
    # Scenario: a secret stored in plaintext by an older version is sealed; one sealed with the old key
    # is resealed under the new; a current seal is left alone; a seal no key opens is left for the
    # operator (start-up must not fail on it).
    old, new = Fernet.generate_key(), Fernet.generate_key()
    secret = totp.new_secret()
    rotating = SecretBox((new, old))
    assert SecretBox((new,)).open(rotating.reseal(secret)) == secret
    resealed = rotating.reseal(SecretBox((old,)).seal(secret))
    assert resealed is not None and SecretBox((new,)).open(resealed) == secret
    assert rotating.reseal(rotating.seal(secret)) is None
    assert rotating.reseal(SecretBox((Fernet.generate_key(),)).seal(secret)) is None


def test_keys_are_parsed_and_a_bad_one_is_named_by_position_never_shown(monkeypatch):
    # Scenario: comma- or space-separated keys, the first sealing; a malformed key stops start-up with
    # an error naming the variable and the key's position, not its value.
    a, b = Fernet.generate_key(), Fernet.generate_key()
    assert parse_keys(f" {a.decode()}, {b.decode()}\n") == (a, b)
    monkeypatch.setenv("DATABASE_URL", "postgresql://x")
    monkeypatch.setenv("NATS_URL", "nats://x")
    monkeypatch.setenv("MAILBLAST_INTERNAL_KEY", "k" * 64)
    for name, value in default_pki().env("auth").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AUTH_TOTP_KEYS", f"{a.decode()},not-a-key-secret-value")
    with pytest.raises(ConfigError) as error:
        Config.from_env()
    assert "AUTH_TOTP_KEYS" in str(error.value) and "key 2" in str(error.value)
    assert "not-a-key-secret-value" not in str(error.value) and a.decode() not in str(error.value)
    monkeypatch.delenv("AUTH_TOTP_KEYS")
    with pytest.raises(ConfigError, match="AUTH_TOTP_KEYS"):
        Config.from_env()
    monkeypatch.setenv("AUTH_TOTP_KEYS", a.decode())
    assert Config.from_env().totp_keys == (a,)
