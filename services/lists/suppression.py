"""What the suppression list means: its reasons, apart from storage and transport."""

from __future__ import annotations

from enum import StrEnum


class SuppressionReason(StrEnum):
    """Why an address is never sent to; the value is what the database holds."""

    UNSUBSCRIBED = "unsubscribed"
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    IMPORT = "import"
    # Only the keyed hash of an erased subscriber's address is kept.
    ERASED = "erased"


# The reasons a person (or an import) may give when suppressing addresses.
GIVEN_BY_HAND = (SuppressionReason.MANUAL, SuppressionReason.IMPORT)
# The reasons a confirmed signup lifts: the owner of the address asked to come back.
LIFTED_BY_CONSENT = frozenset({SuppressionReason.UNSUBSCRIBED, SuppressionReason.ERASED})


def signup_mailed(reason: SuppressionReason | None) -> bool:
    """Whether a form signup of an address suppressed for `reason` (None: not suppressed) gets its mail.

    Bounced, complained or suppressed addresses are not taken back through a form; their signup is
    answered like any other (a stranger learns nothing) and mails nothing.
    """
    return reason is None or reason in LIFTED_BY_CONSENT
