"""What a bounce or complaint does to a subscriber: the rule, apart from storage and transport."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.lists.subscribers import SubscriberStatus

MAX_REASON = 1000


class BounceKind(StrEnum):
    """How a recipient's server (or the recipient) answered."""

    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"


@dataclass(frozen=True)
class Bounce:
    """One bounce event, as the lists service needs it."""

    bounce_id: str
    organization_id: int
    subscriber_id: int
    email: str
    kind: BounceKind
    reason: str


@dataclass(frozen=True)
class SubscriberChange:
    """The subscriber's state after a bounce, and the cause to record if its status changed."""

    status: SubscriberStatus
    hard_bounce_count: int
    last_bounce_reason: str
    cause: str | None


def reason_text(status: str, smtp_code: int, diagnostic: str) -> str:
    """One line saying why the message bounced, e.g. '5.1.1 550 mailbox unknown'."""
    parts = [status, str(smtp_code) if smtp_code else "", " ".join(diagnostic.split())]
    return " ".join(p for p in parts if p)[:MAX_REASON]


def apply(bounce: Bounce, status: str, hard_bounce_count: int, last_reason: str, threshold: int) -> SubscriberChange:
    """Hard bounces count towards error_stopped; soft ones only leave a reason; a complaint marks complained."""
    status = SubscriberStatus(status)
    if bounce.kind is BounceKind.HARD:
        count = hard_bounce_count + 1
        # Only an active subscriber is stopped: an unsubscribed one stays unsubscribed.
        if status is SubscriberStatus.ACTIVE and count >= threshold:
            return SubscriberChange(SubscriberStatus.ERROR_STOPPED, count, bounce.reason, "hard_bounce")
        return SubscriberChange(status, count, bounce.reason, None)
    if bounce.kind is BounceKind.SOFT:
        return SubscriberChange(status, hard_bounce_count, bounce.reason, None)
    if status not in (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.COMPLAINED, SubscriberStatus.DELETED):
        return SubscriberChange(SubscriberStatus.COMPLAINED, hard_bounce_count, last_reason, "complaint")
    return SubscriberChange(status, hard_bounce_count, last_reason, None)
