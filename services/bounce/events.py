"""A stored bounce announced to lists and campaigns: a BounceEvent on JetStream (Nats-Msg-Id = bounce_id)."""

from __future__ import annotations

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext

from services.bounce import convert
from services.bounce.recorder import Announce
from services.bounce.store import BounceRow
from services.common import bus, metrics


def bounce_event(row: BounceRow) -> events_pb2.BounceEvent:
    """The BounceEvent announcing a stored bounce."""
    event = events_pb2.BounceEvent(
        bounce_id=row.bounce_id,
        organization_id=row.organization_id,
        campaign_id=row.campaign_id,
        subscriber_id=row.subscriber_id,
        email=row.email,
        kind=convert.kind_to_proto(row.kind),
        source=convert.source_to_proto(row.source),
        status=row.status,
        smtp_code=row.smtp_code,
        diagnostic=row.diagnostic,
    )
    event.occurred_at.FromDatetime(row.occurred_at)
    return event


def announcer(js: JetStreamContext) -> Announce:
    """The recorder's Announce: publish a stored bounce on mailblast.bounce.recorded, once per bounce_id."""

    async def announce(row: BounceRow) -> None:
        await bus.publish(js, bus.SUBJECT_BOUNCE_RECORDED, bounce_event(row), msg_id=row.bounce_id)
        metrics.BOUNCES.labels("bounce", row.kind, row.source).inc()

    return announce
