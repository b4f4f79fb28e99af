"""Service identities: signed, checked, and refused when forged or expired."""

import pytest

from services.common.errors import Unauthenticated
from services.common.identity import IdentitySigner, Principal


def test_round_trip():
    # A principal signed by one service is read back unchanged by another holding the same key.
    signer = IdentitySigner(b"k" * 32)
    p = Principal(organization_id=7, user_id=3, scopes=("read", "send"), role="admin", service="campaigns")
    assert signer.verify(signer.sign(p)) == p


def test_forged_and_expired_refused():
    # An assertion signed with another key, or past its lifetime, is refused.
    p = Principal(organization_id=7)
    with pytest.raises(Unauthenticated, match="does not verify"):
        IdentitySigner(b"a" * 32).verify(IdentitySigner(b"b" * 32).sign(p))
    with pytest.raises(Unauthenticated, match="expired"):
        IdentitySigner(b"a" * 32, ttl_seconds=-1).verify(IdentitySigner(b"a" * 32, ttl_seconds=-1).sign(p))
    with pytest.raises(Unauthenticated, match="malformed"):
        IdentitySigner(b"a" * 32).verify("garbage")
