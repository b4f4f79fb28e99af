"""VERP return paths and Message-IDs carry campaign and recipient, and refuse forgeries."""

from services.common.verp import (
    RecipientRef,
    message_id,
    message_organization,
    parse_message_id,
    parse_return_path,
    return_path,
    transactional_message_id,
)


def test_round_trip_and_forgery():
    # What the sender writes the bounce service reads back; a changed id or another key reads as nothing.
    key = b"k" * 32
    ref = RecipientRef(3, 42, 1007)
    rp = return_path(key, ref, "bounces.example.com")
    assert len(rp.split("@")[0]) <= 64
    assert parse_return_path(key, rp) == ref
    assert parse_return_path(key, rp.replace("-1007-", "-1008-")) is None
    assert parse_return_path(b"x" * 32, rp) is None
    mid = message_id(key, ref, "mail.example.com")
    assert parse_message_id(key, f"In-Reply-To: {mid}") == ref
    assert parse_message_id(key, "<other@example.com>") is None


def test_a_message_id_tells_its_organisation_only_when_we_signed_it():
    # The development outbox reads whose a message is from its Message-ID: a campaign's or a transactional
    # one's (stable per message key, the key itself not shown) names its organisation; one changed to name
    # another organisation, made up, or signed with another key names none.
    key = b"k" * 32
    campaign = message_id(key, RecipientRef(3, 42, 1007), "mail.example.com")
    reset = transactional_message_id(key, 5, "auth.reset.9.0f3a", "mail.example.com")
    assert message_organization(key, campaign) == 3
    assert message_organization(key, reset) == 5
    assert reset == transactional_message_id(key, 5, "auth.reset.9.0f3a", "mail.example.com")
    assert reset != transactional_message_id(key, 5, "auth.reset.9.0f3b", "mail.example.com")
    assert "auth" not in reset and "0f3a" not in reset
    assert parse_message_id(key, reset) is None
    assert message_organization(key, reset.replace("<tx.5.", "<tx.6.")) is None
    assert message_organization(b"x" * 32, reset) is None
    assert message_organization(key, "<tx.5.aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbb@mail.example.com>") is None
    assert message_organization(key, "") is None
