"""Campaign counters from the senders' reports and bounce's events, on real PostgreSQL and NATS: each
recipient's outcome is counted once, from the event that owns it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest_asyncio
from mailblast.v1 import events_pb2

from services.campaigns.consumers import BounceCounter, DeliveryCounter
from services.campaigns.content import CampaignDraft
from services.campaigns.store import CampaignStore
from services.common import bus, db

SQL = Path(__file__).parents[2] / "services" / "campaigns" / "sql"
ORG = 1


@pytest_asyncio.fixture
async def counting(database_url, nats_server):
    """The campaigns store with a campaign of three recipients handed out, and its two event consumers."""
    await db.migrate(database_url, "campaigns", SQL)
    store = CampaignStore(await db.open_pool(database_url, "campaigns"))
    row = await store.create(ORG, CampaignDraft("c", (1,), "", "a@example.com", "", "s", "", "t"))
    await store.change_state(ORG, row.id, ("draft",), "sending")
    await store.record_batch(row.id, 1, 3, 3)
    await store.finish_fanout(row.id)
    nc, js = await bus.connect(nats_server.url, "campaigns", nats_server.creds("campaigns"))
    consumers = (DeliveryCounter(js, store), BounceCounter(js, store))
    for consumer in consumers:
        await consumer.start()
    try:
        yield store, row.id, *consumers
    finally:
        for consumer in consumers:
            await consumer.stop()
        await nc.close()
        await store.pool.close()


async def publish_as(nats_server, service: str, subject: str, message) -> None:
    """Publish an event with the credential of the service that publishes it."""
    nc, js = await bus.connect(nats_server.url, service, nats_server.creds(service))
    try:
        await bus.publish(js, subject, message)
    finally:
        await nc.close()


async def step(consumer, count: int) -> None:
    """Let a consumer handle `count` messages."""
    deadline = time.monotonic() + 20
    handled = 0
    while handled < count:
        assert time.monotonic() < deadline, f"{handled} of {count} handled"
        handled += await consumer.run_once(timeout=1.0)


def bounce(campaign_id: int, subscriber_id: int, kind, source, bounce_id: str) -> events_pb2.BounceEvent:
    """A BounceEvent as bounce publishes it."""
    return events_pb2.BounceEvent(
        bounce_id=bounce_id, organization_id=ORG, campaign_id=campaign_id, subscriber_id=subscriber_id,
        email=f"s{subscriber_id}@example.net", kind=kind, source=source, smtp_code=550,
    )  # fmt: skip


def delivered(campaign_id: int, subscriber_id: int, outcome) -> events_pb2.DeliveryEvent:
    """One recipient's DeliveryEvent as the sender reports it."""
    return events_pb2.DeliveryEvent(
        organization_id=ORG, campaign_id=campaign_id, subscriber_id=subscriber_id,
        email=f"s{subscriber_id}@example.net", outcome=outcome,
        smtp_code=550 if outcome == events_pb2.DELIVERY_OUTCOME_REJECTED else 250, attempt=1,
    )  # fmt: skip


async def test_the_senders_own_refusals_count_once_from_their_reports_and_returned_mail_counts_too(
    counting, nats_server
):
    # Recipient 1 expired (deferred until the give-up age) and 2 was refused with 550: bounce announces
    # both as bounces (soft and hard, from the sender's SMTP session) for lists' error-stop, and campaigns
    # gets those events before the sender's report. Campaigns counts them once, as the report says: one
    # failed, one bounced, never a second time. Recipient 3 was accepted and a DSN came back later: that
    # bounce, which no report carries, counts as bounced.
    store, campaign_id, deliveries, bounces = counting
    for event in (
        bounce(campaign_id, 1, events_pb2.BOUNCE_KIND_SOFT, events_pb2.BOUNCE_SOURCE_SMTP, "smtp-1"),
        bounce(campaign_id, 2, events_pb2.BOUNCE_KIND_HARD, events_pb2.BOUNCE_SOURCE_SMTP, "smtp-2"),
    ):
        await publish_as(nats_server, "bounce", bus.SUBJECT_BOUNCE_RECORDED, event)
    await step(bounces, 2)
    assert (await store.get(ORG, campaign_id)).bounced == 0
    outcomes = {1: events_pb2.DELIVERY_OUTCOME_EXPIRED, 2: events_pb2.DELIVERY_OUTCOME_REJECTED}
    outcomes[3] = events_pb2.DELIVERY_OUTCOME_SENT
    report = events_pb2.DeliveryReport(events=[delivered(campaign_id, i, outcome) for i, outcome in outcomes.items()])
    await publish_as(nats_server, "sender", bus.SUBJECT_DELIVERY_REPORT, report)
    await step(deliveries, 1)
    counted = await store.get(ORG, campaign_id)
    assert (counted.sent, counted.bounced, counted.failed, counted.state) == (1, 1, 1, "sent")
    dsn = bounce(campaign_id, 3, events_pb2.BOUNCE_KIND_HARD, events_pb2.BOUNCE_SOURCE_DSN, "dsn-3")
    await publish_as(nats_server, "bounce", bus.SUBJECT_BOUNCE_RECORDED, dsn)
    await step(bounces, 1)
    counted = await store.get(ORG, campaign_id)
    assert (counted.sent, counted.bounced, counted.failed) == (0, 2, 1)
