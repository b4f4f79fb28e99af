"""A send never waits on another service, yet pause and unsubscribe still take effect within a second.

The senders keep their own copies of campaign states and suppression lists, fed by NATS; these tests
run the whole pipeline and look at what reaches the SMTP sink, and when.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from mailblast.v1 import campaigns_pb2, lists_pb2, lists_signup_pb2, lists_suppression_pb2

from services.common.identity import IDENTITY_HEADER, Principal
from services.common.verp import RecipientRef, unsubscribe_token
from services.sender import service as sender_service
from tests.support.lists import ListsStubs
from tests.system.test_sender_control import BATCH_SIZE, acked, exactly_once, halted, handed_out, wait_spans

# "Within a second": the time from the answer to the last message that still went out.
EFFECT_SECONDS = 1.0


async def start_sender(stack) -> None:
    """One sender in this process, stopped with the stack."""
    stack.senders.append(await sender_service.start(stack.sender_config))


async def subscriber_ids(stack, list_id: int) -> dict[str, int]:
    """The list's subscribers' ids by address."""
    found: dict[str, int] = {}
    token = ""
    while True:
        page = await stack.lists_stub.ListSubscribers(
            lists_pb2.ListSubscribersRequest(list_id=list_id, page_token=token), metadata=stack.metadata
        )
        found.update({s.email: s.id for s in page.subscribers})
        token = page.next_page_token
        if not token:
            return found


@pytest.mark.stack(senders=0)
async def test_a_campaign_finishes_while_the_lists_service_is_down(stack, smtp_sink):
    # The lists service stops in the middle of a 3,000-recipient campaign (every batch handed out, a
    # sender delivering) and stays down: the campaign still finishes, every recipient receiving the
    # message once, because no delivery asks lists anything. Lists then starts again and a suppression
    # added there reaches the sender's copy.
    emails = [f"l{i:04d}@example.net" for i in range(3000)]
    campaign = await handed_out(stack, emails)
    await start_sender(stack)
    await smtp_sink.wait_for(100, timeout=120)
    await stack.lists.stop()
    try:
        stopped_at = len(smtp_sink.messages)
        done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT)
        assert stopped_at < len(emails), "the whole campaign went out before lists stopped"
        assert done.counters.sent == len(emails)
        exactly_once(smtp_sink, emails)
    finally:
        await stack.restart_lists()
    await stack.lists_stub.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(emails=["later@example.net"], reason="manual"),
        metadata=stack.metadata,
    )
    deadline = time.monotonic() + 30
    while not await stack.senders[0].copies.suppressed(stack.organization_id, ["later@example.net"]):
        assert time.monotonic() < deadline, "the suppression did not reach the sender's copy"
        await asyncio.sleep(0.05)


@pytest.mark.stack(senders=0)
async def test_a_pause_during_a_send_takes_effect_within_a_second(span_exporter, stack, smtp_sink):
    # A sender is delivering a 3,000-recipient campaign when it is paused. The last message of the
    # campaign that still goes out arrives within a second of PauseCampaign's answer, and none after
    # while every remaining batch is looked at again; after resume every recipient has it once.
    emails = [f"q{i:04d}@example.net" for i in range(3000)]
    span_exporter.clear()  # campaign ids repeat from test to test
    campaign = await handed_out(stack, emails)
    batches = range(1, math.ceil(len(emails) / BATCH_SIZE) + 1)
    await start_sender(stack)
    await smtp_sink.wait_for(100, timeout=120)
    await stack.campaigns_stub.PauseCampaign(
        campaigns_pb2.CampaignRequest(campaign_id=campaign.id), metadata=stack.metadata
    )
    answered = time.time()
    spans = await wait_spans(
        span_exporter, campaign.id, lambda spans: all(acked(spans, b) or halted(spans, b, "paused") for b in batches)
    )
    open_batches = [b for b in batches if not acked(spans, b)]
    assert open_batches, "the whole campaign went out before the pause"
    seen = {b: halted(spans, b, "paused") for b in open_batches}
    await wait_spans(
        span_exporter, campaign.id, lambda spans: all(halted(spans, b, "paused") >= seen[b] + 1 for b in open_batches)
    )
    last = max(m.received_at for m in smtp_sink.messages)
    assert len(smtp_sink.messages) < len(emails)
    assert last - answered <= EFFECT_SECONDS, f"a message went out {last - answered:.2f} s after the pause"

    await stack.campaigns_stub.ResumeCampaign(
        campaigns_pb2.CampaignRequest(campaign_id=campaign.id), metadata=stack.metadata
    )
    done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT)
    assert done.counters.sent == len(emails)
    exactly_once(smtp_sink, emails)


@pytest.mark.stack(senders=0)
async def test_an_unsubscribe_during_a_send_takes_effect_within_a_second(stack, smtp_sink, internal_key):
    # A sender is delivering a 3,000-recipient campaign when thirty recipients spread over the rest of
    # it unsubscribe (one-click, relayed by the console). No message reaches any of them later than a
    # second after their unsubscribe was answered; the campaign finishes counting the ones it withheld
    # as suppressed, and everyone else has the message once.
    emails = [f"u{i:04d}@example.net" for i in range(3000)]
    list_id = await stack.create_list(emails)
    campaign = await stack.send_campaign([list_id])
    campaign = await stack.wait_campaign(campaign.id, lambda c: c.fanout_complete, timeout=60)
    ids = await subscriber_ids(stack, list_id)
    await start_sender(stack)
    await smtp_sink.wait_for(100, timeout=120)
    leaving = emails[200::95][:30]
    # As the console relays a one-click unsubscribe: its certificate, a service identity of no organisation.
    console = ListsStubs(stack.channel(stack.lists.grpc_port, "gateway"))
    gateway = [(IDENTITY_HEADER, stack.signer.sign(Principal(organization_id=0, service="gateway"), "lists"))]
    answered: dict[str, float] = {}
    for address in leaving:
        token = unsubscribe_token(internal_key, RecipientRef(stack.organization_id, campaign.id, ids[address]))
        await console.Unsubscribe(
            lists_signup_pb2.UnsubscribeRequest(token=token, source="one-click"), metadata=gateway
        )
        answered[address] = time.time()
    done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT)
    received = smtp_sink.received_by()
    late = {a: received[a][0].received_at - answered[a] for a in leaving if a in received}
    assert all(after <= EFFECT_SECONDS for after in late.values()), late
    withheld = [a for a in leaving if a not in received]
    assert withheld, "every unsubscribed recipient had been sent to already"
    assert (done.counters.suppressed, done.counters.sent) == (len(withheld), len(emails) - len(withheld))
    exactly_once(smtp_sink, [e for e in emails if e not in withheld])
