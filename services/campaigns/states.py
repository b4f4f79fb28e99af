"""Where a campaign is in its life, and where each of its recipients' delivery stands."""

from __future__ import annotations

from enum import StrEnum


class CampaignState(StrEnum):
    """A campaign's state; the value is the one stored in `campaigns.state`."""

    DRAFT = "draft"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"
    # Waiting for its scheduled_at; then it starts sending by itself (services/campaigns/schedule.py).
    SCHEDULED = "scheduled"


class RecipientStatus(StrEnum):
    """Where one recipient's delivery stands; the value is the one stored in `campaign_deliveries.status`
    and names the counter it is counted in."""

    DEFERRED = "deferred"
    SENT = "sent"
    BOUNCED = "bounced"
    FAILED = "failed"
    SUPPRESSED = "suppressed"


def transition(old: RecipientStatus | None, new: RecipientStatus) -> bool:
    """Whether an event moving a recipient from `old` to `new` is applied (events may arrive late or twice)."""
    if old is None or old == RecipientStatus.DEFERRED:
        return True
    # A bounce can come back after the receiving server first accepted the message.
    return old == RecipientStatus.SENT and new == RecipientStatus.BOUNCED
