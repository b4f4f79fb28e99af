"""Statuses are types: each domain StrEnum converts to its protobuf enum at one edge per service, whole."""

from mailblast.v1 import events_pb2

from services.bounce import convert as bounce_convert
from services.bounce.kinds import BounceKind, BounceSource


def test_bounce_kinds_and_sources_convert_one_to_one():
    # Every kind and source bounce stores has its own protobuf value, and every value but UNSPECIFIED is
    # one of them: a new kind on either side fails here, not as a KeyError while announcing a bounce.
    kinds = {kind: bounce_convert.kind_to_proto(kind) for kind in BounceKind}
    assert kinds == {
        BounceKind.HARD: events_pb2.BOUNCE_KIND_HARD,
        BounceKind.SOFT: events_pb2.BOUNCE_KIND_SOFT,
        BounceKind.COMPLAINT: events_pb2.BOUNCE_KIND_COMPLAINT,
    }
    assert set(kinds.values()) == set(events_pb2.BounceKind.values()) - {events_pb2.BOUNCE_KIND_UNSPECIFIED}
    sources = {source: bounce_convert.source_to_proto(source) for source in BounceSource}
    assert sources == {BounceSource.SMTP: events_pb2.BOUNCE_SOURCE_SMTP, BounceSource.DSN: events_pb2.BOUNCE_SOURCE_DSN}
    assert set(sources.values()) == set(events_pb2.BounceSource.values()) - {events_pb2.BOUNCE_SOURCE_UNSPECIFIED}
    # The stored text is the enum's value, so rows written before the enum read back as the same kind.
    assert BounceKind("hard") is BounceKind.HARD and BounceSource("dsn") is BounceSource.DSN
