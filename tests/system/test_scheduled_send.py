"""Scheduled sending (予約配信) on the whole pipeline: by the movable clock, across restarts, once with two replicas."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import campaigns_pb2

from tests.support.clock import MovableClock

CLOCK = MovableClock()
SCHEDULED = campaigns_pb2.CAMPAIGN_STATE_SCHEDULED
SENT = campaigns_pb2.CAMPAIGN_STATE_SENT
DRAFT = campaigns_pb2.CAMPAIGN_STATE_DRAFT
RECIPIENTS = [f"s{i:02d}@example.net" for i in range(12)]


def _at(when: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def _draft(stack, list_id: int, name: str) -> campaigns_pb2.Campaign:
    return await stack.campaigns_stub.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(
            name=name, list_ids=[list_id], from_address="news@news.example.com", subject="{{ name }}様",
            text_body="{{ name }}様",
        ),
        metadata=stack.metadata,
    )  # fmt: skip


async def _schedule(stack, campaign_id: int, when: dt.datetime, zone: str = "Asia/Tokyo"):
    return await stack.campaigns_stub.ScheduleCampaign(
        campaigns_pb2.ScheduleCampaignRequest(campaign_id=campaign_id, send_at=_at(when), time_zone=zone),
        metadata=stack.metadata,
    )


async def _get(stack, campaign_id: int) -> campaigns_pb2.Campaign:
    return await stack.campaigns_stub.GetCampaign(
        campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id), metadata=stack.metadata
    )


@pytest.mark.stack(campaigns=2, campaigns_options={"clock": CLOCK, "run_scheduler": False})
async def test_a_schedule_moved_once_starts_exactly_once_with_two_replicas(stack, smtp_sink):
    # A marketer schedules a campaign for 10:00 Tokyo time, then moves it to 11:00. At 10:30 neither of the
    # two campaigns replicas starts it; at 11:00 both look at once and exactly one claims it; every subscriber
    # gets it once, and a started campaign can be neither moved nor unscheduled.
    list_id = await stack.create_list(RECIPIENTS)
    campaign = await _draft(stack, list_id, "予約配信")
    now = CLOCK.now()
    first = await _schedule(stack, campaign.id, now + dt.timedelta(hours=1))
    assert first.state == SCHEDULED and first.schedule_time_zone == "Asia/Tokyo"
    moved = await _schedule(stack, campaign.id, now + dt.timedelta(hours=2))
    assert moved.state == SCHEDULED and moved.scheduled_at.ToDatetime(dt.UTC) == now + dt.timedelta(hours=2)
    replicas = [stack.campaigns, *stack.more_campaigns]

    CLOCK.advance(hours=1, minutes=30)
    assert [len(started) for started in await asyncio.gather(*(r.scheduler.run_once() for r in replicas))] == [0, 0]
    assert (await _get(stack, campaign.id)).state == SCHEDULED

    CLOCK.advance(minutes=30)
    claims = await asyncio.gather(*(r.scheduler.run_once() for r in replicas))
    assert sorted(len(started) for started in claims) == [0, 1]
    assert [c.id for started in claims for c in started] == [campaign.id]
    done = await stack.wait_campaign(campaign.id, lambda c: c.state == SENT)
    assert done.counters.sent == len(RECIPIENTS)
    await smtp_sink.wait_for(len(RECIPIENTS))
    assert Counter(m.rcpt_tos[0] for m in smtp_sink.messages) == Counter(RECIPIENTS)
    # Nothing more is due for anyone.
    assert [len(s) for s in await asyncio.gather(*(r.scheduler.run_once() for r in replicas))] == [0, 0]

    for call in (
        _schedule(stack, campaign.id, CLOCK.now() + dt.timedelta(hours=1)),
        stack.campaigns_stub.UnscheduleCampaign(
            campaigns_pb2.CampaignRequest(campaign_id=campaign.id), metadata=stack.metadata
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is sent" in refused.value.details()


@pytest.mark.stack(campaigns_options={"clock": CLOCK, "run_scheduler": False})
async def test_schedules_survive_a_restart_and_unscheduled_or_cancelled_ones_never_start(stack, smtp_sink):
    # Three campaigns are scheduled for the same time; one is unscheduled (a draft again) and one
    # cancelled. The time comes while the campaigns process does not look (its scheduler is stepped by
    # hand), then it is restarted with its scheduler running: its first look, at start, starts the one
    # still scheduled, which is delivered; the others never go.
    list_id = await stack.create_list(RECIPIENTS[:3])
    kept, unscheduled, cancelled = [await _draft(stack, list_id, name) for name in ("kept", "unscheduled", "cancelled")]
    when = CLOCK.now() + dt.timedelta(days=1)
    for campaign in (kept, unscheduled, cancelled):
        await _schedule(stack, campaign.id, when, zone="Europe/Berlin")
    back = await stack.campaigns_stub.UnscheduleCampaign(
        campaigns_pb2.CampaignRequest(campaign_id=unscheduled.id), metadata=stack.metadata
    )
    assert back.state == DRAFT and not back.HasField("scheduled_at")
    await stack.campaigns_stub.CancelCampaign(
        campaigns_pb2.CampaignRequest(campaign_id=cancelled.id), metadata=stack.metadata
    )

    CLOCK.advance(days=1, seconds=1)
    await stack.restart_campaigns(run_scheduler=True)
    done = await stack.wait_campaign(kept.id, lambda c: c.state == SENT)
    assert done.counters.sent == 3 and done.schedule_time_zone == "Europe/Berlin"
    await smtp_sink.wait_for(3)
    assert (await _get(stack, unscheduled.id)).state == DRAFT
    assert (await _get(stack, cancelled.id)).state == campaigns_pb2.CAMPAIGN_STATE_CANCELLED
    assert len(smtp_sink.messages) == 3


@pytest.mark.stack(campaigns_options={"clock": CLOCK, "run_scheduler": False})
async def test_a_bad_schedule_is_refused_with_what_was_wrong(stack):
    # A time that has passed, one more than a year ahead, an unknown time zone, no time at all: each is
    # INVALID_ARGUMENT naming the problem, and the campaign stays a draft.
    list_id = await stack.create_list(RECIPIENTS[:1])
    campaign = await _draft(stack, list_id, "bad")
    now = CLOCK.now()
    cases = [
        (campaigns_pb2.ScheduleCampaignRequest(campaign_id=campaign.id, send_at=_at(now - dt.timedelta(minutes=1)),
                                               time_zone="Asia/Tokyo"), "has passed"),
        (campaigns_pb2.ScheduleCampaignRequest(campaign_id=campaign.id, send_at=_at(now + dt.timedelta(days=400)),
                                               time_zone="Asia/Tokyo"), "more than a year ahead"),
        (campaigns_pb2.ScheduleCampaignRequest(campaign_id=campaign.id, send_at=_at(now + dt.timedelta(hours=1)),
                                               time_zone="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (campaigns_pb2.ScheduleCampaignRequest(campaign_id=campaign.id), "send_at is missing"),
    ]  # fmt: skip
    for request, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.campaigns_stub.ScheduleCampaign(request, metadata=stack.metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in refused.value.details()
    assert (await _get(stack, campaign.id)).state == DRAFT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await _schedule(stack, campaign.id + 1000, now + dt.timedelta(hours=1))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
