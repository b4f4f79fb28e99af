"""Classification, VERP attribution and bare line-ending detection of the bounce service."""

from __future__ import annotations

from services.bounce.attribution import attribute, dsn_bounce_id, smtp_bounce_id
from services.bounce.classify import classify
from services.bounce.dsn import BOUNCE, DELIVERED_DSN, parse_bounce
from services.bounce.smtp import has_bare_line_ending
from services.common.verp import RecipientRef, message_id, return_path

KEY = b"k" * 32
REF = RecipientRef(3, 42, 1007)


def _dsn(action: str, status: str, diagnostic: str, original_id: str = "<x@example.com>") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.net\r\nSubject: Delivery Status Notification\r\n"
        "Message-ID: <dsn1@mx.example.net>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nDelivery report.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; who@example.org\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original_id}\r\nTo: who@example.org\r\n\r\n"
        "--b--\r\n"
    ).encode()


def test_classifier_follows_rfc3463_and_the_mtas_words():
    # User unknown and host unknown are hard; a full mailbox is soft even with a 5.x.x code.
    assert classify("5.1.1", "550 5.1.1 User unknown").kind == "hard"
    assert classify("5.1.2", "Host or domain name not found").kind == "hard"
    assert classify("5.4.4", "").kind == "hard"
    assert classify("5.2.2", "552 Mailbox full").kind == "soft"
    assert classify("5.0.0", "552 user quota exceeded").reason == "mailboxfull"
    assert classify("4.4.7", "delivery time expired").kind == "soft"
    assert classify("", "550 Requested action not taken: mailbox unavailable, no such user").kind == "hard"
    assert classify("5.7.1", "554 rejected: listed at zen.spamhaus.org").kind == "soft"


def test_delayed_dsn_is_not_a_bounce():
    # A DSN that only says "delayed" reports no failure: nothing to attribute or record.
    report = parse_bounce(_dsn("delayed", "4.4.7", "421 try again later"))
    assert report.kind == DELIVERED_DSN
    assert attribute(KEY, [return_path(KEY, REF, "b.example.com")], report) == []


def test_attribution_by_verp_then_by_message_id():
    # The signed envelope recipient names the subscriber; without it, the original Message-ID does.
    report = parse_bounce(_dsn("failed", "5.1.1", "550 5.1.1 no such user", message_id(KEY, REF, "m.example")))
    assert report.kind == BOUNCE
    (by_verp,) = attribute(KEY, [return_path(KEY, REF, "whatever.example")], report)
    assert by_verp.ref == REF and by_verp.result.email == "who@example.org" and by_verp.result.kind == "hard"
    (by_id,) = attribute(KEY, ["someone@else.example"], report)
    assert by_id.ref == REF
    assert attribute(b"x" * 32, ["someone@else.example"], report) == []
    assert dsn_bounce_id(report, b"raw", REF, "who@example.org") == dsn_bounce_id(
        report, b"other bytes", REF, "WHO@example.org"
    )
    assert smtp_bounce_id(42, 1007, 1) != smtp_bounce_id(42, 1007, 2)


def test_bare_line_endings_are_detected():
    # Only CRLF is a line ending on the wire; a lone LF or CR is what SMTP smuggling relies on.
    assert not has_bare_line_ending(b"Subject: a\r\n\r\nbody\r\n")
    assert has_bare_line_ending(b"Subject: a\r\n\r\nbody\n.\r\n")
    assert has_bare_line_ending(b"Subject: a\r\n\r\nbody\r.\r\n")
