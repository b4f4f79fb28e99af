"""The bounce service's one conversion between its domain types and the protobuf ones (events.proto)."""

from __future__ import annotations

from mailblast.v1 import events_pb2

from services.bounce.kinds import BounceKind, BounceSource


def kind_to_proto(kind: BounceKind) -> events_pb2.BounceKind.ValueType:
    """BounceKind.HARD is BOUNCE_KIND_HARD, and so on by name."""
    return events_pb2.BounceKind.Value(f"BOUNCE_KIND_{BounceKind(kind).name}")


def source_to_proto(source: BounceSource) -> events_pb2.BounceSource.ValueType:
    """BounceSource.DSN is BOUNCE_SOURCE_DSN, and so on by name."""
    return events_pb2.BounceSource.Value(f"BOUNCE_SOURCE_{BounceSource(source).name}")
