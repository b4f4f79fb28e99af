"""Service identities: signed, checked, and refused when forged, expired or meant for another service."""

import json
import time

import pytest

from services.common.errors import Unauthenticated
from services.common.identity import IdentitySigner, Principal, _unb64


def test_round_trip():
    # A principal signed by one service for another is read back unchanged by the service it is meant for.
    signer = IdentitySigner(b"k" * 32)
    p = Principal(organization_id=7, user_id=3, scopes=("read", "send"), role="admin", service="campaigns")
    assert signer.verify(signer.sign(p, "lists"), "lists") == p


def test_forged_expired_and_misdirected_refused():
    # An assertion signed with another key, past its lifetime, or meant for another service is refused.
    p = Principal(organization_id=7, service="gateway")
    with pytest.raises(Unauthenticated, match="does not verify"):
        IdentitySigner(b"a" * 32).verify(IdentitySigner(b"b" * 32).sign(p, "auth"), "auth")
    with pytest.raises(Unauthenticated, match="expired"):
        IdentitySigner(b"a" * 32, ttl_seconds=-1).verify(
            IdentitySigner(b"a" * 32, ttl_seconds=-1).sign(p, "auth"), "auth"
        )
    with pytest.raises(Unauthenticated, match="malformed"):
        IdentitySigner(b"a" * 32).verify("garbage", "auth")
    with pytest.raises(Unauthenticated, match="meant for auth, not lists"):
        IdentitySigner(b"a" * 32).verify(IdentitySigner(b"a" * 32).sign(p, "auth"), "lists")


def test_assertions_live_a_minute():
    # An assertion is good for 60 seconds by default: long enough for a call, too short to be worth keeping.
    assertion = IdentitySigner(b"a" * 32).sign(Principal(organization_id=7, service="gateway"), "auth")
    body = json.loads(_unb64(assertion.split(".", 1)[0]))
    assert 55 <= body["exp"] - time.time() <= 60
    assert body["aud"] == "auth"
