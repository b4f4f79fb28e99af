"""Recording a bounce: store it once, then announce it (de-duplicated by its id)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from opentelemetry import trace

from services.bounce.attribution import attribute, dsn_bounce_id
from services.bounce.dsn import parse_bounce
from services.bounce.kinds import BounceKind, BounceSource
from services.bounce.store import BounceRow, BounceStore
from services.common.log import get_logger

log = get_logger(__name__)
tracer = trace.get_tracer("services.bounce")

# Tells the other services about a stored bounce (events.py: a BounceEvent on JetStream); announcing one
# twice is harmless, it is de-duplicated by its bounce_id.
Announce = Callable[[BounceRow], Awaitable[None]]


class BounceRecorder:
    """Stores bounces and announces them, in that order, so an announced bounce is always stored."""

    def __init__(self, store: BounceStore, announce: Announce, key: bytes) -> None:
        self._store = store
        self._announce = announce
        self._key = key

    async def record(self, rows: list[BounceRow]) -> list[BounceRow]:
        """Commit the bounces, then announce each (by its bounce_id, so a retry announces once)."""
        if not rows:
            return []
        # As stored: an erased subscriber's bounce is announced with the keyed hash, never the address.
        stored = []
        for row in await self._store.record(rows):
            await self._announce(row)
            stored.append(row)
        return stored

    async def record_returned_message(self, envelope_recipients: list[str], raw: bytes) -> list[BounceRow]:
        """Parse a message received at a VERP address and record the bounces it attributes to us."""
        with tracer.start_as_current_span("bounce.receive_dsn") as span:
            report = parse_bounce(raw)
            span.set_attribute("mailblast.report_kind", report.kind)
            if report.problems:
                # Read anyway (as far as it could be): say what was wrong, with what finds the message again.
                log.warning(
                    "returned message was damaged",
                    problems=list(report.problems),
                    message_id=report.message_id,
                    size=len(raw),
                    kind=report.kind,
                )
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
                        kind=BounceKind(result.kind),
                        source=BounceSource.DSN,
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
