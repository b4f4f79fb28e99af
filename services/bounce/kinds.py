"""What a bounce is: its kind (what it means for the address) and its source (how it was learned)."""

from __future__ import annotations

from enum import StrEnum


class BounceKind(StrEnum):
    """What a bounce means for the address; the value is the one stored in `bounces.kind`."""

    # The address does not take mail: it counts towards lists' error stop.
    HARD = "hard"
    # A passing refusal (full mailbox, greylisting, an expiry): the address is kept.
    SOFT = "soft"
    # The recipient reported the message as spam.
    COMPLAINT = "complaint"


class BounceSource(StrEnum):
    """How a bounce was learned; the value is the one stored in `bounces.source`."""

    # The sender's own SMTP session was refused (or the delivery expired).
    SMTP = "smtp"
    # A delivery status notification (or feedback report) came back to the VERP address.
    DSN = "dsn"
