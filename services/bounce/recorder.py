"""Recording a bounce: store it once, then publish its BounceEvent (de-duplicated by its id)."""

from __future__ import annotations

from datetime import UTC, datetime

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext
from opentelemetry import trace

from services.bounce.attribution import attribute, dsn_bounce_id
from services.bounce.dsn import parse_bounce
from services.bounce.store import BounceRow, BounceStore
from services.common import bus
from services.common.log import get_logger

log = get_logger(__name__)
tracer = trace.get_tracer("services.bounce")

_KINDS = {
    "hard": events_pb2.BOUNCE_KIND_HARD,
    "soft": events_pb2.BOUNCE_KIND_SOFT,
    "complaint": events_pb2.BOUNCE_KIND_COMPLAINT,
}
_SOURCES = {"smtp": events_pb2.BOUNCE_SOURCE_SMTP, "dsn": events_pb2.BOUNCE_SOURCE_DSN}


def bounce_event(row: BounceRow) -> events_pb2.BounceEvent:
    """The BounceEvent announcing a stored bounce."""
    event = events_pb2.BounceEvent(
        bounce_id=row.bounce_id,
        organization_id=row.organization_id,
        campaign_id=row.campaign_id,
        subscriber_id=row.subscriber_id,
        email=row.email,
        kind=_KINDS[row.kind],
        source=_SOURCES[row.source],
        status=row.status,
        smtp_code=row.smtp_code,
        diagnostic=row.diagnostic,
    )
    event.occurred_at.FromDatetime(row.occurred_at)
    return event


class BounceRecorder:
    """Stores bounces and publishes them, in that order, so a published bounce is always stored."""

    def __init__(self, store: BounceStore, js: JetStreamContext, key: bytes) -> None:
        self._store = store
        self._js = js
        self._key = key

    async def record(self, rows: list[BounceRow]) -> list[BounceRow]:
        """Commit the bounces, then publish each (Nats-Msg-Id = bounce_id, so a retry publishes once)."""
        if not rows:
            return []
        # As stored: an erased subscriber's bounce is announced with the keyed hash, never the address.
        stored = []
        for row in await self._store.record(rows):
            await bus.publish(self._js, bus.SUBJECT_BOUNCE_RECORDED, bounce_event(row), msg_id=row.bounce_id)
            stored.append(row)
        return stored

    async def record_returned_message(self, envelope_recipients: list[str], raw: bytes) -> list[BounceRow]:
        """Parse a message received at a VERP address and record the bounces it attributes to us."""
        with tracer.start_as_current_span("bounce.receive_dsn") as span:
            report = parse_bounce(raw)
            span.set_attribute("mailblast.report_kind", report.kind)
            now = datetime.now(UTC)
            rows = []
            for item in attribute(self._key, envelope_recipients, report):
                result = item.result
                rows.append(
                    BounceRow(
                        bounce_id=dsn_bounce_id(report, raw, item.ref, result.email),
                        organization_id=item.ref.organization_id,
                        campaign_id=item.ref.campaign_id,
                        subscriber_id=item.ref.subscriber_id,
                        email=result.email,
                        kind=result.kind,
                        source="dsn",
                        status=result.status,
                        smtp_code=result.smtp_code,
                        diagnostic=result.diagnostic,
                        reason=result.reason,
                        occurred_at=now,
                    )
                )
            span.set_attribute("mailblast.bounces", len(rows))
            if not rows:
                log.info("returned message recorded nothing", kind=report.kind, recipients=len(report.recipients))
            return await self.record(rows)
