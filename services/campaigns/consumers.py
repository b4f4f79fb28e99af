"""Campaign counters from the senders' delivery reports and the bounce service's bounce events.

Both runners write in groups: the reports that come together are counted in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext

from services.campaigns import convert
from services.campaigns.states import RecipientStatus
from services.campaigns.store import CampaignStore, RecipientOutcome
from services.common import bus
from services.common.runner import Ack, Decision, Delivery, GroupRunner

DURABLE_DELIVERY = "campaigns-delivery"
DURABLE_BOUNCES = "campaigns-bounces"
# Messages worked on (and so counted together) at once.
SLOTS = 200

# One bounce to count: its id (counted once, however often it is announced) and the recipient's outcome.
CountedBounce = tuple[str, RecipientOutcome]


def outcomes_of(report: events_pb2.DeliveryReport) -> list[RecipientOutcome]:
    """The recipient outcomes a delivery report counts (transactional mail's events count nothing)."""
    outcomes = []
    for event in report.events:
        status = convert.recipient_status(event.outcome)
        if status is not None:
            outcomes.append(
                RecipientOutcome(event.campaign_id, event.subscriber_id, event.email, status, event.smtp_code)
            )
    return outcomes


def bounce_outcome(event: events_pb2.BounceEvent) -> CountedBounce | None:
    """The bounce a BounceEvent counts: DSNs of campaign mail only.

    The senders' own refusals (a 5xx, an expiry), which bounce also announces for lists' error stop, are
    counted once, from the delivery reports; complaints are not bounces.
    """
    if event.kind == events_pb2.BOUNCE_KIND_COMPLAINT or not event.campaign_id:
        return None
    if event.source == events_pb2.BOUNCE_SOURCE_SMTP:
        return None
    outcome = RecipientOutcome(
        event.campaign_id, event.subscriber_id, event.email, RecipientStatus.BOUNCED, event.smtp_code
    )
    return event.bounce_id, outcome


class DeliveryCounter(GroupRunner[events_pb2.DeliveryReport, list[RecipientOutcome]]):
    """campaigns-delivery: counts each recipient's latest delivery outcome."""

    payload_type = events_pb2.DeliveryReport
    span_name = "count deliveries"

    def __init__(self, js: JetStreamContext, store: CampaignStore) -> None:
        async def write(groups: Sequence[list[RecipientOutcome]]) -> list[None]:
            await store.apply_outcomes([outcome for outcomes in groups for outcome in outcomes])
            return [None] * len(groups)

        super().__init__(
            js, write=write, stream=bus.STREAM_DELIVERY, durable=DURABLE_DELIVERY,
            subject=bus.SUBJECT_DELIVERY_REPORT, slots=SLOTS,
        )  # fmt: skip

    def describe(self, report: events_pb2.DeliveryReport, delivery: Delivery) -> dict[str, Any]:
        """How many events the report holds."""
        return {"mailblast.events": len(report.events)}

    async def dispose(self, report: events_pb2.DeliveryReport, delivery: Delivery) -> Decision:
        """Count the report's outcomes with the others that came with it."""
        await self.writer.submit(outcomes_of(report))
        return Ack()


class BounceCounter(GroupRunner[events_pb2.BounceEvent, CountedBounce | None]):
    """campaigns-bounces: counts recipients whose mail came back after it was accepted (DSNs)."""

    payload_type = events_pb2.BounceEvent
    span_name = "count bounce"

    def __init__(self, js: JetStreamContext, store: CampaignStore) -> None:
        async def write(bounces: Sequence[CountedBounce | None]) -> list[None]:
            counted = [bounce for bounce in bounces if bounce is not None]
            await store.apply_outcomes([outcome for _, outcome in counted], [bounce_id for bounce_id, _ in counted])
            return [None] * len(bounces)

        super().__init__(
            js, write=write, stream=bus.STREAM_BOUNCE, durable=DURABLE_BOUNCES, subject=bus.SUBJECT_BOUNCE_RECORDED,
            slots=SLOTS,
        )  # fmt: skip

    def describe(self, event: events_pb2.BounceEvent, delivery: Delivery) -> dict[str, Any]:
        """The bounce's campaign."""
        return {"mailblast.campaign_id": event.campaign_id}

    async def dispose(self, event: events_pb2.BounceEvent, delivery: Delivery) -> Decision:
        """Count the bounce (if it is one campaigns counts) with the others that came with it."""
        await self.writer.submit(bounce_outcome(event))
        return Ack()
