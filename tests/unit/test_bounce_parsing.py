"""Classification, VERP attribution and bare line-ending detection of the bounce service."""

from __future__ import annotations

import json

from services.bounce.attribution import attribute, dsn_bounce_id, smtp_bounce_id
from services.bounce.classify import HARD_REASONS, Verdict, classify, find_command
from services.bounce.dsn import BOUNCE, DELIVERED_DSN, FEEDBACK_REPORT, parse_bounce
from services.bounce.providers import provider_of
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


def test_delayed_dsn_is_a_soft_bounce_and_deliverable_is_not_one():
    # A DSN that only says "delayed" is a soft event (the MTA still retries): counted, never suppressed,
    # even when the server's words would be a hard reason. "deliverable" (an address test, 2.1.5) is
    # no failure at all.
    report = parse_bounce(_dsn("delayed", "4.4.7", "421 try again later"))
    assert report.kind == BOUNCE
    assert [(r.email, r.kind, r.reason) for r in report.recipients] == [("who@example.org", "soft", "expired")]
    (item,) = attribute(KEY, [return_path(KEY, REF, "b.example.com")], report)
    assert item.ref == REF and item.result.kind == "soft"
    unknown = parse_bounce(_dsn("delayed", "4.1.1", "450 4.1.1 mailbox unknown"))
    assert [r.kind for r in unknown.recipients] == ["soft"]
    tested = parse_bounce(_dsn("deliverable", "2.1.5", "250 2.1.5 ok"))
    assert tested.kind == DELIVERED_DSN
    assert attribute(KEY, [return_path(KEY, REF, "b.example.com")], tested) == []


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


def test_reason_follows_status_command_and_words_like_sisimai():
    # Only the four "address is gone" reasons are hard; every reason is named, as the lists service shows it.
    assert HARD_REASONS == {"userunknown", "hostunknown", "hasmoved", "notaccept"}
    assert (
        classify("5.1.1", "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown").reason == "userunknown"
    )
    assert classify("5.1.6", "551 not our customer").reason == "hasmoved"
    assert classify("5.1.10", "556 recipient domain has null MX").reason == "notaccept"
    # 5.1.1 on a full mailbox or a blocked client: the words win over the code.
    assert classify("5.1.1", "550 5.1.1 mailbox is full").reason == "mailboxfull"
    assert classify("5.2.1", "550 5.2.1 account has been disabled").kind == "soft"
    # No such user answered to RCPT is a missing mailbox; answered after DATA it is a content filter.
    assert classify("", "550 Unknown user x@b.example", command="RCPT").reason == "userunknown"
    assert classify("", "550 Unknown user x@b.example", command="DATA").reason == "filtered"
    assert classify("5.2.1", "550 5.2.1 <x@b.example>... User Unknown").reason == "filtered"
    # Sender-side problems are soft: a rejected envelope sender, a 5.7.x policy refusal.
    assert classify("", "553 sender verify failed", command="MAIL").reason == "rejected"
    assert classify("5.7.1", "550 5.7.1 Service unavailable").reason == "securityerror"
    assert classify("5.6.0", "").reason == "contenterror"
    # Nothing to go on: onhold with words, undefined without; a delayed action is expired.
    assert classify("", "something odd happened").reason == "onhold"
    assert classify("", "").reason == "undefined"
    assert classify("", "", action="delayed").reason == "expired"


def test_smtp_command_is_read_from_transcripts():
    # Sendmail's ">>> RCPT To:", Postfix's "in reply to RCPT TO command", Exim's "after end of data";
    # the furthest command reached wins, and ordinary words ("data", "mail from") are not commands.
    assert find_command(">>> MAIL From:<a@b.example>\n<<< 250 ok\n>>> RCPT To:<c@d.example>\n<<< 550 no") == "RCPT"
    assert find_command("said: 550 5.1.1 unknown (in reply to RCPT TO command)") == "RCPT"
    assert find_command("SMTP error from remote mail server after end of data: 550 rejected") == "DATA"
    assert find_command(">>> DATA\n<<< 554 Unknown user") == "DATA"
    assert find_command("SMTP:RCPT host 192.0.2.1: 553 5.3.0 <x@example.com>... No such user here") == "RCPT"
    assert find_command("your mail from yesterday has data we could not read") == ""


def test_ses_json_notifications_are_bounces_and_complaints():
    # Amazon SES posts bounces and complaints as JSON, often wrapped in an SNS envelope whose "Message"
    # is itself JSON, and the mail carrying it may have had long lines broken by sendmail ("!" + newline).
    inner = (
        '{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bouncedRecipients":'
        '[{"emailAddress":"gone@example.org","action":"failed","status":"5.1.1",'
        '"diagnosticCode":"smtp; 550 5.1.1 user unknown"}]},"mail":{"messageId":"m1"}}'
    )
    envelope = '{"Type":"Notification","Message":' + json.dumps(inner) + "}"
    body = envelope[:120] + "!\n " + envelope[120:]
    raw = f"From: SES <no-reply@sns.amazonaws.com>\nSubject: AWS Notification Message\n\n{body}\n".encode()
    report = parse_bounce(raw)
    assert report.kind == BOUNCE
    (gone,) = report.recipients
    assert (gone.email, gone.kind, gone.reason, gone.status) == ("gone@example.org", "hard", "userunknown", "5.1.1")
    # A transient SES bounce is never hard, whatever its words.
    transient = inner.replace("Permanent", "Transient")
    assert parse_bounce(f"From: x@sns.amazonaws.com\n\n{transient}\n").recipients[0].kind == "soft"
    complaint = (
        '{"notificationType":"Complaint","complaint":{"complainedRecipients":'
        '[{"emailAddress":"annoyed@example.org"}],"complaintFeedbackType":"abuse"}}'
    )
    report = parse_bounce(f"From: x@sns.amazonaws.com\nSubject: AWS Notification\n\n{complaint}\n")
    assert report.kind == FEEDBACK_REPORT
    assert [(r.email, r.kind, r.reason) for r in report.recipients] == [
        ("annoyed@example.org", "complaint", "feedback")
    ]
    # A delivery notification is no failure: a delivered-dsn, attributed to nobody.
    delivery = (
        '{"notificationType":"Delivery","delivery":{"recipients":["fine@example.org"],'
        '"smtpResponse":"250 2.6.0 Message received","reportingMTA":"a1.smtp-out.amazonses.com"}}'
    )
    report = parse_bounce(f"From: x@sns.amazonaws.com\nSubject: AWS Notification\n\n{delivery}\n")
    assert report.kind == DELIVERED_DSN
    assert [(r.email, r.reason, r.status) for r in report.recipients] == [("fine@example.org", "delivered", "2.6.0")]
    assert attribute(KEY, [return_path(KEY, REF, "b.example.com")], report) == []


def test_complaints_without_an_arf_part_and_mailto_unsubscribes_are_feedback():
    # A complaint loop that forwards the reported message with "complaint about message from <ip>" and
    # no message/feedback-report part, and a mailbox provider's List-Unsubscribe mailto request.
    loop = (
        "From: staff@mail.example.net\nSubject: complaint about message from 192.0.2.1\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="z"\n\n--z\nContent-Type: message/rfc822\n\n'
        "From: news@sender.example\nTo: reader@example.org\nSubject: hi\n\nhello\n--z--\n"
    )
    report = parse_bounce(loop)
    assert report.kind == FEEDBACK_REPORT and [r.email for r in report.recipients] == ["reader@example.org"]
    unsubscribe = (
        "From: reader@example.org\nTo: unsubscribe-123@sender.example\nSubject: unsubscribe\n"
        "Auto-Submitted: auto-replied\n\nThe mail client sent this email to unsubscribe.\n"
    )
    report = parse_bounce(unsubscribe)
    assert report.kind == FEEDBACK_REPORT
    assert [(r.email, r.diagnostic) for r in report.recipients] == [("reader@example.org", "opt-out")]


def test_plain_text_notice_from_post_master_names_the_recipient():
    # Apache James and other Java servers sign as "post_master" and list the envelope in "Message details".
    raw = (
        "From: post_master@mx.example.org\nTo: news@sender.example\nSubject: Re: Hello\n\n"
        "Error: Invalid user address\nError message below:\n"
        "550 - Requested action not taken: no such user here\n\nMessage details:\n"
        "  MAIL FROM: news@sender.example\n  RCPT TO: gone.user@example.org\n"
    )
    report = parse_bounce(raw)
    assert report.kind == BOUNCE
    assert [(r.email, r.kind) for r in report.recipients] == [("gone.user@example.org", "hard")]


def test_arf_report_keeps_every_original_rcpt_to():
    # RFC 5965 allows one Original-Rcpt-To per recipient of the reported message: each is a complaint,
    # and an original addressed to "undisclosed-recipients:;" gives no made-up address.
    arf = (
        b"From: fbl@isp.example\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
        b"--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n"
        b"Original-Rcpt-To: <one@example.org>\r\nOriginal-Rcpt-To: <two@example.org>\r\n\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nTo: undisclosed-recipients:;\r\n\r\n--b--\r\n"
    )
    report = parse_bounce(arf)
    assert report.kind == FEEDBACK_REPORT
    assert [(r.email, r.kind) for r in report.recipients] == [
        ("one@example.org", "complaint"),
        ("two@example.org", "complaint"),
    ]
    alone = parse_bounce(
        arf.replace(b"Original-Rcpt-To: <one@example.org>\r\nOriginal-Rcpt-To: <two@example.org>\r\n", b"")
    )
    # Still a complaint (for the VERP address it came to), without an address, and the report says so.
    assert [(r.email, r.kind) for r in alone.recipients] == [("", "complaint")]
    assert alone.problems == ("no complained-about address in the report or the reported headers",)


def test_the_senders_own_replies_use_the_providers_rules():
    # An SMTP reply the sender got carries no host name, but Google signs its replies " - gsmtp" and
    # Exchange Online names its server in brackets: their own rules then decide, as for returned mail.
    google = (
        "421-4.7.0 [192.0.2.1 15] Our system has detected an unusual rate of unsolicited mail originating "
        "from your IP address. To protect our users from spam, mail sent from your IP address has been "
        "temporarily rate limited. - gsmtp"
    )
    assert classify("4.7.0", google, 421).reason == "blocked"
    multiple_from = (
        "550-5.7.1 [192.0.2.1 13] Messages with multiple addresses in From: header are not accepted. - gsmtp"
    )
    assert classify("5.7.1", multiple_from, 550).reason == "notcompliantrfc"
    outlook = (
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP. "
        "[BN3NAM04FT004.eop-NAM04.prod.protection.outlook.com 2024-01-01T00:00:00.000Z]"
    )
    # Microsoft's table reads 5.7.708 "traffic not accepted from this IP" as speeding; without knowing
    # whose reply it is, a 5.7.x refusal is only a securityerror.
    assert classify("5.7.708", outlook, 550).reason == "speeding"
    assert classify("5.7.708", outlook.split(" [")[0], 550).reason == "securityerror"
    assert classify(
        "5.1.1", "550-5.1.1 The email account that you tried to reach does not exist. - gsmtp", 550
    ) == Verdict("hard", "userunknown")


def test_attribution_takes_the_recipient_our_copy_was_addressed_to():
    # A DSN listing several failed recipients (an alias that expanded, a relay that batched) for one
    # VERP address: the subscriber's result is the one whose address the returned original's To names.
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        b"Final-Recipient: rfc822; other@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n"
        b"Final-Recipient: rfc822; who@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"Message-ID: <x@example.com>\r\nTo: Who <who@example.org>\r\n\r\n"
        b"--b--\r\n"
    )
    report = parse_bounce(raw)
    assert [r.email for r in report.recipients] == ["other@example.org", "who@example.org"]
    (item,) = attribute(KEY, [return_path(KEY, REF, "b.example.com")], report)
    assert (item.ref, item.result.email, item.result.kind, item.result.reason) == (
        REF,
        "who@example.org",
        "hard",
        "userunknown",
    )


def test_a_transcripts_successes_do_not_hide_the_refusal():
    # A notice quoting the whole session: the 220 greeting and 250 2.1.0 come before the refusal, whose
    # code and status are the ones that count.
    notice = (
        b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\n"
        b"<gone@example.org>: transcript of session follows.\r\n Out: 220 mx.example.org ESMTP\r\n"
        b" In:  MAIL FROM:<a@example.com>\r\n Out: 250 2.1.0 Ok\r\n In:  RCPT TO:<gone@example.org>\r\n"
        b" Out: 550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown\r\n"
    )
    (result,) = parse_bounce(notice).recipients
    assert (result.email, result.status, result.smtp_code, result.reason, result.kind) == (
        "gone@example.org",
        "5.1.1",
        550,
        "userunknown",
        "hard",
    )


def test_providers_are_recognised_by_whole_host_and_domain_labels():
    # The refusing host or the recipient's domain names the provider; a domain that merely ends like
    # one of its host names ("e.com" and Apple's "me.com") does not.
    assert provider_of(("mx3.mail.icloud.com",), "") == "apple"
    assert provider_of((), "laposte.net") == "franceptt"
    assert provider_of(("aspmx.l.google.com",), "example.org") == "google"
    assert provider_of((), "e.com") == ""
    assert provider_of(("mx.example.net",), "example.net") == ""


def test_plain_notices_name_their_failed_address_through_the_mta_detectors():
    # An Exchange 5.5 notice quotes the original's To and Cc (list addresses) before the one recipient
    # that failed: flufl.bounce's detectors of MTA formats pick the failed one, and "Mailman 2.0.12" in
    # the subject is no status code.
    notice = (
        b"From: System Administrator <postmaster@example.com>\r\nTo: list-bounces@example.org\r\n"
        b"Subject: Undeliverable: RELEASED Mailman 2.0.12\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
        b"Your message\r\n\r\n  To:      list@example.org\r\n  Cc:      other-list@example.org\r\n"
        b"  Subject: RELEASED Mailman 2.0.12\r\n  Sent:    Thu, 11 Jul 2002 16:52:33 -0300\r\n\r\n"
        b"did not reach the following recipient(s):\r\n\r\n"
        b"userx@example.com on Thu, 11 Jul 2002 16:54:54 -0300\r\n"
        b"    The recipient name is not recognized\r\n"
        b"    MSEXCH:IMS:Example:CENTRAL:DC02 0 (000C05A6) Unknown Recipient\r\n"
    )
    report = parse_bounce(notice)
    assert [(r.email, r.reason, r.kind, r.status) for r in report.recipients] == [
        ("userx@example.com", "userunknown", "hard", "")
    ]


def test_mta_notice_wordings_decide_before_the_generic_rules():
    # Gmail's "(state N)" names the step reached; Exim's "mailbox is full: retry timeout exceeded" is a
    # full mailbox, not a timeout; MessageLabs asking for SMTP AUTH is a security error even though the
    # reply also says "not permitted to relay".
    gmail = "The error that the other server returned was: 554 554 5.7.0 Header error (state 18)."
    assert classify("", gmail).reason == "filtered"
    assert classify("", "550 550 5.1.1 <x@example.jp>... User Unknown (state 14).").reason == "userunknown"
    assert classify("", "mailbox is full: retry timeout exceeded").reason == "mailboxfull"
    auth = (
        "550-Please turn on SMTP Authentication in your mail client. 550-mail0.example.net [192.0.2.1]:2222 "
        "is not permitted to 550 relay through this server without authentication."
    )
    assert classify("", auth, 550).reason == "securityerror"


def test_status_codes_the_issue_names():
    # X.7.25 is a failed reverse-DNS check (requireptr), 5.2.3 a message over the recipient's limit
    # (exceedlimit), and Microsoft's 5.1.10 with RecipientNotFound an unknown recipient (hard); a 5.1.10
    # that speaks of a null MX stays notaccept.
    assert classify("5.7.25", "550 5.7.25 The IP address sending this message does not have a PTR record").reason == (
        "requireptr"
    )
    assert classify("4.7.25", "450 4.7.25 Client host rejected: cannot find your hostname").reason == "requireptr"
    assert classify("5.2.3", "552 5.2.3 Message exceeds maximum fixed size").reason == "exceedlimit"
    microsoft = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    assert classify("5.1.10", microsoft, 550) == Verdict("hard", "userunknown")
    assert classify("5.1.10", "556 5.1.10 recipient domain has null MX", 556) == Verdict("hard", "notaccept")
