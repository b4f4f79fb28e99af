"""JetStream consumers of the bounce service: refused and expired deliveries become bounces."""

from __future__ import annotations

from datetime import UTC, datetime

from mailblast.v1 import events_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace

from services.bounce.attribution import smtp_bounce_id
from services.bounce.classify import classify
from services.bounce.kinds import BounceKind, BounceSource
from services.bounce.recorder import BounceRecorder
from services.bounce.store import BounceRow
from services.common import bus
from services.common.tracing import extract_context

DURABLE_DELIVERY = "bounce-delivery"
tracer = trace.get_tracer("services.bounce")


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


def delivery_consumer(js: JetStreamContext, recorder: BounceRecorder) -> bus.PullConsumer:
    """The durable consumer of delivery reports (bounce-delivery on MAILBLAST_DELIVERY)."""

    async def handle(msgs: list[Msg]) -> None:
        for msg in msgs:
            with tracer.start_as_current_span("bounce.delivery_report", context=extract_context(msg.headers)):
                try:
                    report = bus.decode(msg, events_pb2.DeliveryReport)
                except bus.DecodeError as exc:
                    await bus.dead_letter(js, msg, f"not a DeliveryReport: {exc}")
                    continue
                await recorder.record(bounces_of(report))
                await msg.ack()

    return bus.PullConsumer(
        js=js,
        stream=bus.STREAM_DELIVERY,
        durable=DURABLE_DELIVERY,
        subject=bus.SUBJECT_DELIVERY_REPORT,
        handler=handle,
    )
