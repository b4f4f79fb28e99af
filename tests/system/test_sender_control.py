"""Pause, cancel and suppression take effect in the senders, for batches already handed out."""

from __future__ import annotations

import asyncio
import math
import time

import nats.errors
import pytest
from mailblast.v1 import campaigns_pb2, events_pb2, lists_suppression_pb2

from cli import nats_credentials
from services.common import bus
from services.common.mail import send_transactional
from services.sender import service as sender_service
from services.sender.consumers import DURABLE
from tests.support.clock import MovableClock
from tests.support.nats import connect_with

BATCH_SIZE = 500  # the campaigns service's default


async def start_sender(stack, clock: MovableClock | None = None) -> None:
    """One more sender in this process (going by `clock`, the system's by default), stopped with the stack."""
    stack.senders.append(await sender_service.start(stack.sender_config, clock=clock))


async def campaign_request(stack, verb: str, campaign_id: int) -> campaigns_pb2.Campaign:
    """Pause, resume or cancel a campaign as the admin."""
    call = getattr(stack.campaigns_stub, f"{verb}Campaign")
    return await call(campaigns_pb2.CampaignRequest(campaign_id=campaign_id), metadata=stack.metadata)


def batch_spans(span_exporter, campaign_id: int) -> list:
    """The sender's finished batch spans of one campaign."""
    return [
        s
        for s in span_exporter.get_finished_spans()
        if s.name == "send batch" and s.attributes.get("mailblast.campaign_id") == campaign_id
    ]


async def wait_spans(span_exporter, campaign_id: int, done, timeout: float = 60.0) -> list:
    """Poll the batch spans until done(spans) holds."""
    deadline = time.monotonic() + timeout
    while True:
        spans = batch_spans(span_exporter, campaign_id)
        if done(spans):
            return spans
        assert time.monotonic() < deadline, f"batch spans not as expected within {timeout}s: {len(spans)}"
        await asyncio.sleep(0.05)


def halted(spans, batch_number: int, state: str) -> int:
    """How many passes over one batch the campaign's state stopped."""
    return sum(
        1
        for s in spans
        if s.attributes.get("mailblast.batch_number") == batch_number and s.attributes.get("mailblast.halted") == state
    )


def acked(spans, batch_number: int) -> bool:
    """Whether a pass over the batch ended it for good."""
    return any(
        s.attributes.get("mailblast.batch_number") == batch_number and s.attributes.get("mailblast.decision") == "ack"
        for s in spans
    )


def exactly_once(smtp_sink, emails: list[str]) -> None:
    received = smtp_sink.received_by()
    assert sorted(received) == sorted(emails)
    assert all(len(copies) == 1 for copies in received.values())


async def handed_out(stack, emails: list[str]) -> campaigns_pb2.Campaign:
    """A campaign to these addresses, sent and fully fanned out (no sender has taken any of it yet)."""
    list_id = await stack.create_list(emails)
    campaign = await stack.send_campaign([list_id])
    return await stack.wait_campaign(campaign.id, lambda c: c.fanout_complete, timeout=60)


@pytest.mark.stack(senders=0)
async def test_paused_before_the_senders_take_it_nothing_goes_out_until_resumed(span_exporter, stack, smtp_sink):
    # A campaign entirely in NATS is paused before any sender takes it: a sender then looks at every
    # batch, repeatedly, and sends nothing; after resume every recipient gets the message exactly once.
    emails = [f"p{i:04d}@example.net" for i in range(1200)]
    span_exporter.clear()  # campaign ids repeat from test to test
    campaign = await handed_out(stack, emails)
    batches = range(1, math.ceil(len(emails) / BATCH_SIZE) + 1)
    await campaign_request(stack, "Pause", campaign.id)
    await start_sender(stack)
    # Every batch comes back after the recheck delay and is stopped again, each time without sending.
    await wait_spans(span_exporter, campaign.id, lambda spans: all(halted(spans, b, "paused") >= 3 for b in batches))
    assert smtp_sink.received_by() == {}
    paused = await stack.wait_campaign(campaign.id, lambda c: True)
    assert (paused.state, paused.counters.sent, paused.counters.queued) == (
        campaigns_pb2.CAMPAIGN_STATE_PAUSED,
        0,
        len(emails),
    )

    await campaign_request(stack, "Resume", campaign.id)
    done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT)
    assert (done.counters.sent, done.counters.deferred, done.counters.failed) == (len(emails), 0, 0)
    exactly_once(smtp_sink, emails)


@pytest.mark.stack(senders=0)
async def test_pause_mid_send_stops_deliveries_and_resume_sends_the_rest_once(span_exporter, stack, smtp_sink):
    # A sender is delivering a 3,000-recipient campaign when it is paused: once every batch under way
    # has wound up (a finished batch acked, the others stopped by the pause), nothing more arrives
    # while each remaining batch is looked at twice more; resume delivers the rest, each once.
    emails = [f"m{i:04d}@example.net" for i in range(3000)]
    span_exporter.clear()  # campaign ids repeat from test to test
    campaign = await handed_out(stack, emails)
    batches = range(1, math.ceil(len(emails) / BATCH_SIZE) + 1)
    await start_sender(stack)
    await smtp_sink.wait_for(100, timeout=120)
    await campaign_request(stack, "Pause", campaign.id)

    spans = await wait_spans(
        span_exporter, campaign.id, lambda spans: all(acked(spans, b) or halted(spans, b, "paused") for b in batches)
    )
    during_pause = len(smtp_sink.messages)
    open_batches = [b for b in batches if not acked(spans, b)]
    assert open_batches, "the whole campaign went out before the pause"
    seen = {b: halted(spans, b, "paused") for b in open_batches}
    await wait_spans(
        span_exporter, campaign.id, lambda spans: all(halted(spans, b, "paused") >= seen[b] + 2 for b in open_batches)
    )
    assert len(smtp_sink.messages) == during_pause < len(emails)
    paused = await stack.wait_campaign(campaign.id, lambda c: True)
    assert paused.state == campaigns_pb2.CAMPAIGN_STATE_PAUSED

    await campaign_request(stack, "Resume", campaign.id)
    done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT)
    assert done.counters.sent == len(emails)
    exactly_once(smtp_sink, emails)


@pytest.mark.stack(senders=0)
async def test_cancel_mid_send_stops_for_good(span_exporter, stack, smtp_sink, nats_server):
    # A sender is delivering a 3,000-recipient campaign when it is cancelled: every batch ends (acked)
    # with the rest unsent, nothing is left in NATS to deliver, and no recipient got two copies.
    emails = [f"c{i:04d}@example.net" for i in range(3000)]
    span_exporter.clear()  # campaign ids repeat from test to test
    campaign = await handed_out(stack, emails)
    batches = range(1, math.ceil(len(emails) / BATCH_SIZE) + 1)
    await start_sender(stack)
    await smtp_sink.wait_for(100, timeout=120)
    await campaign_request(stack, "Cancel", campaign.id)

    spans = await wait_spans(span_exporter, campaign.id, lambda spans: all(acked(spans, b) for b in batches))
    assert any(s.attributes.get("mailblast.halted") == "cancelled" for s in spans)
    nc = await nats_server.connect()
    try:
        info = await nc.jetstream().consumer_info(bus.STREAM_SEND, DURABLE)
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await nc.close()
    received = smtp_sink.received_by()
    assert 100 <= len(received) < len(emails)
    assert all(len(copies) == 1 for copies in received.values())
    # The counters follow the senders' delivery reports, which arrive a moment after the mail itself.
    cancelled = await stack.wait_campaign(campaign.id, lambda c: c.counters.sent == len(received))
    assert cancelled.state == campaigns_pb2.CAMPAIGN_STATE_CANCELLED


@pytest.mark.stack(senders=0)
async def test_address_suppressed_after_the_fan_out_is_not_sent_and_counts_as_suppressed(stack, smtp_sink):
    # An address suppressed after the fan-out handed it out (so the fan-out could not filter it) is
    # withheld by the sender: the others receive the mail, the campaign counts one suppressed and finishes.
    emails = [f"s{i}@example.net" for i in range(5)]
    campaign = await handed_out(stack, emails)
    assert campaign.counters.total == 5
    added = await stack.lists_stub.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(emails=["s2@example.net"], reason="manual"),
        metadata=stack.metadata,
    )
    assert added.added == 1
    await start_sender(stack)
    done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT)
    assert (done.counters.sent, done.counters.suppressed, done.counters.queued) == (4, 1, 0)
    exactly_once(smtp_sink, [e for e in emails if e != "s2@example.net"])


async def test_transactional_mail_to_a_suppressed_address_only_for_account_and_confirmation(
    stack, smtp_sink, nats_server, tmp_path
):
    # To a suppressed address, the platform's password reset and double opt-in confirmation still go
    # out; a campaign's test send is withheld and reported as suppressed. An application that names its
    # messages "auth.password_reset" or "lists.confirm" on its own subject is withheld too: only the
    # platform's services may publish the platform subject (NATS refuses it the application: test_nats_auth).
    await stack.lists_stub.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(emails=["blocked@example.net"], reason="manual"),
        metadata=stack.metadata,
    )
    nc = await nats_server.connect()
    try:
        js = nc.jetstream()
        reports = await js.pull_subscribe(bus.SUBJECT_DELIVERY_REPORT, stream=bus.STREAM_DELIVERY)
        for key, category in (
            ("auth.reset.1.b1", "auth.password_reset"),
            ("lists.confirm.1.b1", "lists.confirm"),
            ("campaigns.test.1.b1", "campaigns.test"),
        ):
            await send_transactional(
                js,
                events_pb2.TransactionalMessage(
                    organization_id=stack.organization_id,
                    message_key=key,
                    to_address="blocked@example.net",
                    content=events_pb2.MessageContent(
                        from_address="news@news.example.com", subject=category, text_body="body"
                    ),
                    category=category,
                ),
            )
        creds, _ = nats_server.issuer.application(stack.organization_id, "shop-app")
        path = tmp_path / "shop-app.creds"
        nats_credentials.write_secret(path, creds)
        app = await connect_with(nats_server.url, str(path), allow_reconnect=False)
        try:
            for key, category in (("app.reset.1.b1", "auth.password_reset"), ("app.confirm.1.b1", "lists.confirm")):
                message = events_pb2.TransactionalMessage(
                    organization_id=stack.organization_id,
                    message_key=key,
                    to_address="blocked@example.net",
                    content=events_pb2.MessageContent(
                        from_address="news@news.example.com", subject=category, text_body="body"
                    ),
                    category=category,
                )
                await bus.publish(app.jetstream(), bus.transactional_subject(stack.organization_id), message)
        finally:
            await app.close()
        outcomes: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while len(outcomes) < 5:
            assert time.monotonic() < deadline, outcomes
            try:
                msgs = await reports.fetch(10, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                for event in events_pb2.DeliveryReport.FromString(msg.data).events:
                    outcomes[event.message_key] = event.outcome
                await msg.ack()
    finally:
        await nc.close()
    assert outcomes == {
        "auth.reset.1.b1": events_pb2.DELIVERY_OUTCOME_SENT,
        "lists.confirm.1.b1": events_pb2.DELIVERY_OUTCOME_SENT,
        "campaigns.test.1.b1": events_pb2.DELIVERY_OUTCOME_SUPPRESSED,
        "app.reset.1.b1": events_pb2.DELIVERY_OUTCOME_SUPPRESSED,
        "app.confirm.1.b1": events_pb2.DELIVERY_OUTCOME_SUPPRESSED,
    }
    [caught_reset, caught_confirm] = sorted(smtp_sink.messages, key=lambda m: b"lists.confirm" in m.data)
    assert b"Subject: auth.password_reset" in caught_reset.data
    assert b"Subject: lists.confirm" in caught_confirm.data


@pytest.mark.stack(senders=0, sender_overrides={"give_up_seconds": 1.0})
async def test_a_pause_longer_than_the_give_up_age_costs_no_retries(span_exporter, stack, smtp_sink):
    # The give-up clock counts from a recipient's first attempt, not from when the batch was made: a
    # campaign paused for longer than the give-up age, whose recipient is then refused once with 451,
    # is retried and delivered after the resume instead of expiring at once.
    smtp_sink.reply = lambda addr, seen: (
        "451 4.7.1 try again later" if addr == "late@example.net" and seen == 0 else None
    )
    span_exporter.clear()
    campaign = await handed_out(stack, ["late@example.net", "ok@example.net"])
    await campaign_request(stack, "Pause", campaign.id)
    clock = MovableClock()
    await start_sender(stack, clock)
    await wait_spans(span_exporter, campaign.id, lambda spans: halted(spans, 1, "paused") >= 1)
    # The pause outlasts the give-up age, as far as the sender can tell.
    clock.advance(1.5)
    await campaign_request(stack, "Resume", campaign.id)
    done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT)
    assert (done.counters.sent, done.counters.failed) == (2, 0)
    exactly_once(smtp_sink, ["late@example.net", "ok@example.net"])
