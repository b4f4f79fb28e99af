"""The console's one conversion of the services' status enums into the names its pages, forms and
translations use: each value's name in lower case without the enum's prefix (CAMPAIGN_STATE_DRAFT: "draft")."""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from mailblast.v1 import campaigns_pb2, lists_pb2


def names_of(enum: EnumTypeWrapper, prefix: str) -> dict[int, str]:
    """Every value of the enum but UNSPECIFIED, by number, with its console name, in the contract's order."""
    return {number: name.removeprefix(prefix).lower() for name, number in enum.items() if number != 0}


SUBSCRIBER_STATUSES = names_of(lists_pb2.SubscriberStatus, "SUBSCRIBER_STATUS_")
CAMPAIGN_STATES = names_of(campaigns_pb2.CampaignState, "CAMPAIGN_STATE_")
