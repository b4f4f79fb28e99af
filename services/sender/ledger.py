"""The sender's ledger, as the domain sees it: delivery statuses, the result of one offer, outcomes to record."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum


class DeliveryStatus(StrEnum):
    """Where a recipient's (or a transactional message's) delivery stands; stored and reported as is."""

    # A sender is delivering it now; the claim lapses if that sender dies.
    CLAIMED = "claimed"
    SENT = "sent"
    # Refused for now (4xx, no reply, DNS): tried again after a backoff.
    DEFERRED = "deferred"
    # Refused for good (5xx) or unsendable (bad address, template).
    REJECTED = "rejected"
    # Deferred until the give-up age.
    EXPIRED = "expired"
    # Never offered: suppressed, or its subscriber erased, when the sender came to it.
    SUPPRESSED = "suppressed"

    @property
    def final(self) -> bool:
        """Whether nothing more will be done for it."""
        return self in FINAL


FINAL = frozenset({DeliveryStatus.SENT, DeliveryStatus.REJECTED, DeliveryStatus.EXPIRED, DeliveryStatus.SUPPRESSED})

_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one message: its status, the server's reply, and whether TLS was used."""

    status: DeliveryStatus
    code: int
    message: str
    enhanced_status: str = ""
    tls: bool = False


def status_for(code: int) -> DeliveryStatus:
    """2xx is sent, 5xx rejected, anything else (4xx, no reply) deferred for a retry."""
    if 200 <= code < 300:
        return DeliveryStatus.SENT
    if 500 <= code < 600:
        return DeliveryStatus.REJECTED
    return DeliveryStatus.DEFERRED


def enhanced_status(message: str) -> str:
    """The RFC 3463 status (e.g. '5.1.1') leading a reply text, or ''."""
    match = _ENHANCED.match(message or "")
    return match.group(1) if match else ""


def reply_result(code: int, message: str, tls: bool) -> DeliveryResult:
    """The result of an SMTP reply."""
    text = (message or "").strip()
    return DeliveryResult(status_for(code), code, text[:1000], enhanced_status(text), tls)


def deferred(reason: str, tls: bool = False) -> DeliveryResult:
    """A temporary failure without an SMTP reply (connection, timeout, DNS)."""
    return DeliveryResult(DeliveryStatus.DEFERRED, 0, reason[:1000], "", tls)


def suppressed(reason: str) -> DeliveryResult:
    """A message withheld because its address is suppressed or its subscriber erased (never offered)."""
    return DeliveryResult(DeliveryStatus.SUPPRESSED, 0, f"suppressed: {reason}")


def rejected(reason: str) -> DeliveryResult:
    """A permanent failure found before any SMTP conversation (bad address, unsafe header, template)."""
    return DeliveryResult(DeliveryStatus.REJECTED, 0, reason[:1000], "", False)


@dataclass(frozen=True)
class LedgerState:
    """A recipient's status so far, how many attempts it has had, and the last outcome's details."""

    status: DeliveryStatus
    attempts: int
    email: str = ""
    message_id: str = ""
    smtp_code: int = 0
    smtp_message: str = ""
    enhanced_status: str = ""
    tls: bool = False
    updated_at: dt.datetime | None = None
    first_attempt_at: dt.datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """One delivery outcome to write to the ledger and report on NATS."""

    organization_id: int
    campaign_id: int
    subscriber_id: int
    email: str
    status: DeliveryStatus
    message_id: str
    smtp_code: int
    smtp_message: str
    enhanced_status: str
    tls: bool
    # Which attempt this was (1 for the first); an expiry repeats the last attempt's number.
    attempt: int
    # False for an expiry or a withheld message: it records a decision, not another attempt.
    counts_attempt: bool
    occurred_at: dt.datetime
    # Set for a transactional message (campaign_id and subscriber_id 0): its idempotency key and kind,
    # and when it was asked for (an erasure after that time covers it).
    message_key: str = ""
    category: str = ""
    message_created_at: dt.datetime | None = None

    @classmethod
    def of(
        cls,
        result: DeliveryResult,
        *,
        organization_id: int,
        email: str,
        previous: LedgerState | None,
        occurred_at: dt.datetime,
        message_id: str = "",
        campaign_id: int = 0,
        subscriber_id: int = 0,
        message_key: str = "",
        category: str = "",
        message_created_at: dt.datetime | None = None,
    ) -> Outcome:
        """The outcome of an attempt (or, for a withheld message, of a decision that is no attempt)."""
        counts = result.status != DeliveryStatus.SUPPRESSED
        return cls(
            organization_id=organization_id,
            campaign_id=campaign_id,
            subscriber_id=subscriber_id,
            email=email,
            status=result.status,
            message_id=message_id,
            smtp_code=result.code,
            smtp_message=result.message,
            enhanced_status=result.enhanced_status,
            tls=result.tls,
            attempt=(previous.attempts if previous else 0) + (1 if counts else 0),
            counts_attempt=counts,
            occurred_at=occurred_at,
            message_key=message_key,
            category=category,
            message_created_at=message_created_at,
        )
