"""The one place lists' domain meets protobuf: StrEnums <-> proto enum numbers, condition trees <-> messages."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from mailblast.v1 import events_pb2, lists_pb2, lists_segments_pb2

from services.common.protojson import message_tree
from services.lists.bounces import BounceKind
from services.lists.subscribers import SubscriberStatus
from services.lists.suppression import SuppressionReason

E = TypeVar("E", bound=StrEnum)


def _numbers(proto: EnumTypeWrapper, prefix: str, domain: type[E]) -> dict[E, int]:
    """Each domain member's proto number, matched by name (SUBSCRIBER_STATUS_ACTIVE is ACTIVE)."""
    numbers = {member: proto.Value(f"{prefix}{member.name}") for member in domain}
    return numbers


_STATUS = _numbers(lists_pb2.SubscriberStatus, "SUBSCRIBER_STATUS_", SubscriberStatus)
_STATUS_OF = {number: member for member, number in _STATUS.items()}
_KIND_OF = {number: member for member, number in _numbers(events_pb2.BounceKind, "BOUNCE_KIND_", BounceKind).items()}
_REASON = _numbers(events_pb2.SuppressionReason, "SUPPRESSION_REASON_", SuppressionReason)
_REASON_OF = {number: member for member, number in _REASON.items()}


def reason_pb(reason: str | None) -> int:
    """The proto number of a stored suppression reason (UNSPECIFIED for none)."""
    return _REASON[SuppressionReason(reason)] if reason else events_pb2.SUPPRESSION_REASON_UNSPECIFIED


def reason(number: int) -> SuppressionReason | None:
    """The suppression reason a proto number names; None for UNSPECIFIED or an unknown number."""
    return _REASON_OF.get(number)


def status_pb(status: str) -> int:
    """The proto number of a stored status (UNSPECIFIED for one this release does not know)."""
    try:
        return _STATUS[SubscriberStatus(status)]
    except ValueError:
        return lists_pb2.SUBSCRIBER_STATUS_UNSPECIFIED


def status(number: int) -> SubscriberStatus | None:
    """The status a proto number names; None for UNSPECIFIED or an unknown number."""
    return _STATUS_OF.get(number)


def bounce_kind(number: int) -> BounceKind | None:
    """The bounce kind a BounceEvent names; None for UNSPECIFIED or an unknown number."""
    return _KIND_OF.get(number)


def segment_tree(root: lists_segments_pb2.SegmentCondition) -> dict[str, Any]:
    """The condition tree a SegmentCondition holds, as segments.py compiles it and the database keeps it."""
    return message_tree(root)


def segment_pb(tree: dict[str, Any]) -> lists_segments_pb2.SegmentCondition:
    """A stored condition tree as the SegmentCondition it was given as."""
    return json_format.ParseDict(tree, lists_segments_pb2.SegmentCondition(), ignore_unknown_fields=True)
