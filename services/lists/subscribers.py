"""What a subscriber is in: the statuses, apart from storage and transport."""

from __future__ import annotations

from enum import StrEnum


class SubscriberStatus(StrEnum):
    """A subscriber's status; the value is what the database and the CSV exports hold."""

    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    # Stopped after too many hard bounces (blastmail's エラー停止).
    ERROR_STOPPED = "error_stopped"
    COMPLAINED = "complained"
    DELETED = "deleted"
    # Signed up through a form, waiting for the confirmation click (double opt-in).
    PENDING = "pending"


# Statuses that take no more mail and that a status change by hand also suppresses.
SUPPRESSING = frozenset({SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.COMPLAINED})
