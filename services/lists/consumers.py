"""The JetStream consumer of bounce events: hard bounces stop subscribers, complaints unsubscribe them."""

from __future__ import annotations

from typing import Any

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext
from opentelemetry import trace

from services.common import bus
from services.common.log import get_logger
from services.common.runner import Ack, DeadLetter, Decision, Delivery, Runner
from services.lists import convert
from services.lists.bounces import Bounce, reason_text
from services.lists.store import ListsStore

log = get_logger(__name__)

DURABLE = "lists-bounces"
# A failure that is not the message's fault (database down) is retried after this pause.
RETRY_DELAY_SECONDS = 5.0


class BounceConsumer(Runner[events_pb2.BounceEvent]):
    """lists-bounces: applies `mailblast.bounce.recorded` events to subscribers, each bounce id once."""

    payload_type = events_pb2.BounceEvent
    span_name = "lists apply bounce"

    def __init__(self, js: JetStreamContext, store: ListsStore, hard_bounce_threshold: int) -> None:
        super().__init__(
            js, stream=bus.STREAM_BOUNCE, durable=DURABLE, subject=bus.SUBJECT_BOUNCE_RECORDED,
            retry_delay=RETRY_DELAY_SECONDS,
        )  # fmt: skip
        self._store = store
        self._threshold = hard_bounce_threshold

    def describe(self, event: events_pb2.BounceEvent, delivery: Delivery) -> dict[str, Any]:
        """The bounce, its kind and subscriber."""
        return {
            "mailblast.bounce_id": event.bounce_id,
            "mailblast.bounce_kind": str(convert.bounce_kind(event.kind) or ""),
            "mailblast.subscriber_id": event.subscriber_id,
        }

    async def dispose(self, event: events_pb2.BounceEvent, delivery: Delivery) -> Decision:
        """Apply the bounce (acknowledged once it and its id are committed); an incomplete event is kept aside."""
        kind = convert.bounce_kind(event.kind)
        if kind is None or not event.bounce_id or not event.organization_id:
            return DeadLetter("BounceEvent lacks a bounce_id, an organization_id or a known kind")
        bounce = Bounce(
            bounce_id=event.bounce_id,
            organization_id=event.organization_id,
            subscriber_id=event.subscriber_id,
            email=event.email,
            kind=kind,
            reason=reason_text(event.status, event.smtp_code, event.diagnostic),
        )
        outcome = await self._store.apply_bounce(bounce, self._threshold)
        trace.get_current_span().set_attribute("mailblast.outcome", str(outcome))
        log.info(
            "bounce handled",
            bounce_id=bounce.bounce_id,
            kind=str(kind),
            organization_id=bounce.organization_id,
            subscriber_id=bounce.subscriber_id,
            outcome=str(outcome),
        )
        return Ack()
