"""The JetStream consumer of bounce events: hard bounces stop subscribers, complaints unsubscribe them."""

from __future__ import annotations

import asyncio

from mailblast.v1 import events_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace

from services.common import bus
from services.common.log import get_logger
from services.common.tracing import extract_context
from services.lists.bounces import Bounce, BounceKind, reason_text
from services.lists.store import ListsStore

log = get_logger(__name__)
tracer = trace.get_tracer(__name__)

DURABLE = "lists-bounces"
# A failure that is not the message's fault (database down) is retried after this pause.
RETRY_DELAY_SECONDS = 5.0

_KINDS = {
    events_pb2.BOUNCE_KIND_HARD: BounceKind.HARD,
    events_pb2.BOUNCE_KIND_SOFT: BounceKind.SOFT,
    events_pb2.BOUNCE_KIND_COMPLAINT: BounceKind.COMPLAINT,
}


class BounceConsumer:
    """Applies `mailblast.bounce.recorded` events to subscribers, each bounce id once."""

    def __init__(self, js: JetStreamContext, store: ListsStore, hard_bounce_threshold: int) -> None:
        self._js = js
        self._store = store
        self._threshold = hard_bounce_threshold
        self._consumer = bus.PullConsumer(js, bus.STREAM_BOUNCE, DURABLE, bus.SUBJECT_BOUNCE_RECORDED, self._handle)

    async def start(self) -> None:
        """Bind to the durable consumer."""
        await self._consumer.start()

    async def run_once(self, timeout: float = 1.0) -> int:
        """Handle one fetched batch; return how many messages it held."""
        return await self._consumer.run_once(timeout)

    async def run(self, stop: asyncio.Event) -> None:
        """Handle batches until `stop` is set."""
        await self._consumer.run(stop)

    async def stop(self) -> None:
        """Leave the subscription."""
        await self._consumer.stop()

    async def _handle(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            await self._handle_one(msg)

    async def _handle_one(self, msg: Msg) -> None:
        try:
            event = bus.decode(msg, events_pb2.BounceEvent)
        except bus.DecodeError as exc:
            await bus.dead_letter(self._js, msg, f"payload is not a BounceEvent: {exc}")
            return
        kind = _KINDS.get(event.kind)
        if kind is None or not event.bounce_id or not event.organization_id:
            await bus.dead_letter(self._js, msg, "BounceEvent lacks a bounce_id, an organization_id or a known kind")
            return
        bounce = Bounce(
            bounce_id=event.bounce_id,
            organization_id=event.organization_id,
            subscriber_id=event.subscriber_id,
            email=event.email,
            kind=kind,
            reason=reason_text(event.status, event.smtp_code, event.diagnostic),
        )
        with tracer.start_as_current_span(
            "lists apply bounce", context=extract_context(msg.headers), kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("mailblast.bounce_id", bounce.bounce_id)
            span.set_attribute("mailblast.bounce_kind", str(kind))
            span.set_attribute("mailblast.subscriber_id", bounce.subscriber_id)
            try:
                outcome = await self._store.apply_bounce(bounce, self._threshold)
            except Exception as exc:
                span.record_exception(exc)
                log.exception("bounce not applied; it will be redelivered", bounce_id=bounce.bounce_id)
                await msg.nak(delay=RETRY_DELAY_SECONDS)
                return
            span.set_attribute("mailblast.outcome", str(outcome))
        # Acknowledged only now that the change (and the bounce id) is committed.
        await msg.ack()
        log.info(
            "bounce handled",
            bounce_id=bounce.bounce_id,
            kind=str(kind),
            organization_id=bounce.organization_id,
            subscriber_id=bounce.subscriber_id,
            outcome=str(outcome),
        )
