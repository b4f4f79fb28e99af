"""The campaigns service's one conversion between its domain types and the protobuf ones."""

from __future__ import annotations

from mailblast.v1 import campaigns_pb2, events_pb2

from services.campaigns.states import CampaignState, RecipientStatus

# How the senders' delivery outcomes are counted: a refusal is a bounce, an expiry a failure.
_RECIPIENT_STATUS = {
    events_pb2.DELIVERY_OUTCOME_SENT: RecipientStatus.SENT,
    events_pb2.DELIVERY_OUTCOME_DEFERRED: RecipientStatus.DEFERRED,
    events_pb2.DELIVERY_OUTCOME_REJECTED: RecipientStatus.BOUNCED,
    events_pb2.DELIVERY_OUTCOME_EXPIRED: RecipientStatus.FAILED,
    events_pb2.DELIVERY_OUTCOME_SUPPRESSED: RecipientStatus.SUPPRESSED,
}


def state_to_proto(state: CampaignState) -> campaigns_pb2.CampaignState.ValueType:
    """CampaignState.DRAFT is CAMPAIGN_STATE_DRAFT, and so on by name."""
    return campaigns_pb2.CampaignState.Value(f"CAMPAIGN_STATE_{CampaignState(state).name}")


def recipient_status(outcome: events_pb2.DeliveryOutcome.ValueType) -> RecipientStatus | None:
    """The status a delivery outcome puts its recipient in; None for an outcome that is not counted."""
    return _RECIPIENT_STATUS.get(outcome)
