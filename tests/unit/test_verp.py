"""VERP return paths and Message-IDs carry campaign and recipient, and refuse forgeries."""

from services.common.verp import RecipientRef, message_id, parse_message_id, parse_return_path, return_path


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
