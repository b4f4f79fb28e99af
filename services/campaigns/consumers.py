"""Campaign counters from the senders' delivery reports and the bounce service's bounce events."""

from __future__ import annotations

from mailblast.v1 import events_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace

from services.campaigns.store import CampaignStore, RecipientOutcome
from services.common import bus
from services.common.tracing import extract_context

tracer = trace.get_tracer("mailblast.campaigns")

DURABLE_DELIVERY = "campaigns-delivery"
DURABLE_BOUNCES = "campaigns-bounces"

_STATUS = {
    events_pb2.DELIVERY_OUTCOME_SENT: "sent",
    events_pb2.DELIVERY_OUTCOME_DEFERRED: "deferred",
    events_pb2.DELIVERY_OUTCOME_REJECTED: "bounced",
    events_pb2.DELIVERY_OUTCOME_EXPIRED: "failed",
    events_pb2.DELIVERY_OUTCOME_SUPPRESSED: "suppressed",
}


def delivery_consumer(js: JetStreamContext, store: CampaignStore) -> bus.PullConsumer:
    """Counts each recipient's latest delivery outcome."""

    async def handle(msgs: list[Msg]) -> None:
        outcomes: list[RecipientOutcome] = []
        good: list[Msg] = []
        for msg in msgs:
            try:
                report = bus.decode(msg, events_pb2.DeliveryReport)
            except bus.DecodeError as exc:
                await bus.dead_letter(js, msg, f"not a DeliveryReport: {exc}")
                continue
            good.append(msg)
            for event in report.events:
                status = _STATUS.get(event.outcome)
                if status is None:
                    continue
                outcomes.append(
                    RecipientOutcome(event.campaign_id, event.subscriber_id, event.email, status, event.smtp_code)
                )
        if good:
            with tracer.start_as_current_span(
                "campaign.count_deliveries",
                context=extract_context(good[0].headers),
                attributes={"mailblast.events": len(outcomes)},
            ):
                await store.apply_outcomes(outcomes)
            for msg in good:
                await msg.ack()

    return bus.PullConsumer(js, bus.STREAM_DELIVERY, DURABLE_DELIVERY, bus.SUBJECT_DELIVERY_REPORT, handle, batch=200)


def bounce_consumer(js: JetStreamContext, store: CampaignStore) -> bus.PullConsumer:
    """Counts recipients whose mail came back after it was accepted (DSNs); the senders' own refusals, which
    bounce also announces for lists' error-stop, are counted once, from the delivery reports."""

    async def handle(msgs: list[Msg]) -> None:
        outcomes: list[RecipientOutcome] = []
        bounce_ids: list[str] = []
        good: list[Msg] = []
        for msg in msgs:
            try:
                event = bus.decode(msg, events_pb2.BounceEvent)
            except bus.DecodeError as exc:
                await bus.dead_letter(js, msg, f"not a BounceEvent: {exc}")
                continue
            good.append(msg)
            if event.kind == events_pb2.BOUNCE_KIND_COMPLAINT or not event.campaign_id:
                continue
            if event.source == events_pb2.BOUNCE_SOURCE_SMTP:
                # The sender's own refusal (a 5xx, an expiry): counted from its DeliveryReport already.
                continue
            bounce_ids.append(event.bounce_id)
            outcomes.append(
                RecipientOutcome(event.campaign_id, event.subscriber_id, event.email, "bounced", event.smtp_code)
            )
        if good:
            with tracer.start_as_current_span(
                "campaign.count_bounces",
                context=extract_context(good[0].headers),
                attributes={"mailblast.events": len(outcomes)},
            ):
                await store.apply_outcomes(outcomes, bounce_ids)
            for msg in good:
                await msg.ack()

    return bus.PullConsumer(js, bus.STREAM_BOUNCE, DURABLE_BOUNCES, bus.SUBJECT_BOUNCE_RECORDED, handle, batch=200)
