"""JetStream consumers of the bounce service: refused and expired deliveries become bounces."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext

from services.bounce.attribution import smtp_bounce_id
from services.bounce.classify import classify
from services.bounce.kinds import BounceKind, BounceSource
from services.bounce.recorder import BounceRecorder
from services.bounce.store import BounceRow
from services.common import bus
from services.common.runner import Ack, Decision, Delivery, Runner

DURABLE_DELIVERY = "bounce-delivery"
# Reports worked on at once: each is its own transaction, and reports are independent of each other.
SLOTS = 8


def bounces_of(report: events_pb2.DeliveryReport) -> list[BounceRow]:
    """The bounces a delivery report implies: REJECTED by the classifier, EXPIRED as soft (campaign mail only)."""
    rows: list[BounceRow] = []
    for event in report.events:
        if event.campaign_id == 0:
            # A transactional message (password reset, opt-in...) names no subscriber to stop.
            continue
        if event.outcome == events_pb2.DELIVERY_OUTCOME_REJECTED:
            verdict = classify(event.enhanced_status, event.smtp_message, event.smtp_code)
            kind, reason = BounceKind(verdict.kind), verdict.reason
        elif event.outcome == events_pb2.DELIVERY_OUTCOME_EXPIRED:
            kind, reason = BounceKind.SOFT, "expired"
        else:
            continue
        occurred = event.occurred_at.ToDatetime(tzinfo=UTC) if event.HasField("occurred_at") else None
        rows.append(
            BounceRow(
                bounce_id=smtp_bounce_id(event.campaign_id, event.subscriber_id, event.attempt),
                organization_id=event.organization_id,
                campaign_id=event.campaign_id,
                subscriber_id=event.subscriber_id,
                email=event.email,
                kind=kind,
                source=BounceSource.SMTP,
                status=event.enhanced_status,
                smtp_code=event.smtp_code,
                diagnostic=event.smtp_message[:2000],
                reason=reason,
                occurred_at=occurred or datetime.now(UTC),
            )
        )
    return rows


class DeliveryReportConsumer(Runner[events_pb2.DeliveryReport]):
    """bounce-delivery: the bounces each delivery report implies, recorded and announced in order."""

    payload_type = events_pb2.DeliveryReport
    span_name = "record refusals"

    def __init__(self, js: JetStreamContext, recorder: BounceRecorder) -> None:
        super().__init__(
            js, stream=bus.STREAM_DELIVERY, durable=DURABLE_DELIVERY, subject=bus.SUBJECT_DELIVERY_REPORT, slots=SLOTS
        )
        self._recorder = recorder

    def describe(self, report: events_pb2.DeliveryReport, delivery: Delivery) -> dict[str, Any]:
        """How many events the report holds."""
        return {"mailblast.events": len(report.events)}

    async def dispose(self, report: events_pb2.DeliveryReport, delivery: Delivery) -> Decision:
        """Record the report's refusals and expiries; acknowledged once they are stored and announced."""
        await self._recorder.record(bounces_of(report))
        return Ack()
