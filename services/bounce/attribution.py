"""Which of our subscribers a returned message is about, and the stable id of each bounce."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from services.bounce.dsn import BOUNCE, FEEDBACK_REPORT, BounceReport, RecipientResult
from services.common.verp import RecipientRef, parse_message_id, parse_return_path


@dataclass(frozen=True)
class AttributedBounce:
    """One failed recipient of a returned message, tied to the campaign and subscriber it was for."""

    ref: RecipientRef
    result: RecipientResult


def attribute(key: bytes, envelope_recipients: list[str], report: BounceReport) -> list[AttributedBounce]:
    """Tie a report's failures to subscribers: the signed VERP envelope first, else the original Message-ID.

    One VERP address stands for one subscriber, and our copy was addressed to that subscriber alone:
    of several failed recipients, the one the returned original's To names is theirs (else the first,
    as when an alias expanded). Forged or foreign addresses attribute nothing.
    """
    if report.kind not in (BOUNCE, FEEDBACK_REPORT) or not report.recipients:
        return []
    refs = [ref for ref in (parse_return_path(key, rcpt) for rcpt in envelope_recipients) if ref]
    if not refs:
        refs = [ref for ref in (parse_message_id(key, mid) for mid in report.original_message_ids) if ref]
    addressed = set(report.original_recipients)
    theirs = next((r for r in report.recipients if r.email and r.email in addressed), report.recipients[0])
    return [AttributedBounce(ref, theirs) for ref in dict.fromkeys(refs)]


def dsn_bounce_id(report: BounceReport, raw: bytes, ref: RecipientRef, email: str) -> str:
    """A stable id for a returned message's bounce: the same DSN received twice has the same id."""
    origin = f"{report.message_id}|{report.date}" if report.message_id else hashlib.sha256(raw).hexdigest()
    text = f"dsn|{origin}|{ref.organization_id}.{ref.campaign_id}.{ref.subscriber_id}|{email.lower()}"
    return "dsn-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def smtp_bounce_id(campaign_id: int, subscriber_id: int, attempt: int) -> str:
    """A stable id for a bounce seen in the sender's own SMTP session, per campaign, subscriber, attempt."""
    text = f"{campaign_id}|{subscriber_id}|smtp|{attempt}"
    return "smtp-" + hashlib.sha256(text.encode()).hexdigest()[:40]
