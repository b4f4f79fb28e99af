"""The one place lists' statuses and kinds meet protobuf: domain StrEnums <-> proto enum numbers."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from mailblast.v1 import events_pb2, lists_pb2

from services.lists.bounces import BounceKind
from services.lists.subscribers import SubscriberStatus

E = TypeVar("E", bound=StrEnum)


def _numbers(proto: EnumTypeWrapper, prefix: str, domain: type[E]) -> dict[E, int]:
    """Each domain member's proto number, matched by name (SUBSCRIBER_STATUS_ACTIVE is ACTIVE)."""
    numbers = {member: proto.Value(f"{prefix}{member.name}") for member in domain}
    return numbers


_STATUS = _numbers(lists_pb2.SubscriberStatus, "SUBSCRIBER_STATUS_", SubscriberStatus)
_STATUS_OF = {number: member for member, number in _STATUS.items()}
_KIND_OF = {number: member for member, number in _numbers(events_pb2.BounceKind, "BOUNCE_KIND_", BounceKind).items()}


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
