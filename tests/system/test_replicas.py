"""Two replicas of campaigns, bounce and the sender side by side, as Kubernetes runs them: each message once."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiosmtplib
import pytest
from mailblast.v1 import bounce_pb2, campaigns_pb2, events_pb2, lists_pb2

from services.common.verp import parse_return_path
from tests.support.poll import poll
from tests.support.smtp import dsn_for

SENT = campaigns_pb2.CAMPAIGN_STATE_SENT
RECIPIENTS = [f"r{i:03d}@example.net" for i in range(60)]
REFUSED = [f"gone{i}@example.net" for i in range(3)]  # a 550 at delivery: bounces the sender reports
RETURNED = RECIPIENTS[:10]  # accepted, then returned as a DSN to one bounce replica
TWICE = RETURNED[:4]  # ... and to the other one as well, as a server retrying after a lost reply would


async def return_dsn(port: int, caught, rcpt: str, dsn: bytes) -> None:
    """What a receiving server does later: a DSN with the null reverse path to the message's VERP address."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
        await smtp.mail("")
        await smtp.rcpt(caught.mail_from)
        await smtp.data(dsn)


@pytest.mark.stack(senders=2, campaigns=2, bounces=2, campaigns_overrides={"batch_size": 7})
async def test_two_of_each_service_deliver_and_count_every_message_once(stack, smtp_sink):
    # Two campaigns go out at once through different campaigns replicas; a third is sent and then both
    # replicas are evicted and start again together, so that both pick the unfinished fan-outs up. Two
    # senders share the batches, two bounce services the delivery reports. Every recipient gets each
    # campaign once, the refused ones are counted bounced once per campaign. Then DSNs come back to either
    # bounce listener, some to both: each is recorded once, counted once in its campaign and once for its
    # subscriber; the other campaigns' counters do not move.
    smtp_sink.reply = lambda addr, seen: "550 5.1.1 user unknown" if addr.startswith("gone") else None
    list_id = await stack.create_list(RECIPIENTS + REFUSED)
    (other,) = stack.more_campaigns
    first, second = await asyncio.gather(
        stack.send_campaign([list_id], name="first"), stack.send_campaign([list_id], via=other, name="second")
    )
    third = await stack.send_campaign([list_id], name="third")
    await stack.restart_campaigns()
    total = len(RECIPIENTS) + len(REFUSED)
    for campaign in (first, second, third):
        done = await stack.wait_campaign(campaign.id, lambda c: c.state == SENT and c.counters.bounced == 3)
        counters = done.counters
        assert (counters.total, counters.sent, counters.bounced, counters.queued) == (total, 60, 3, 0), campaign.name

    received = smtp_sink.received_by()
    assert sorted(received) == RECIPIENTS
    campaigns_of = {
        address: Counter(parse_return_path(stack.sender_config.internal_key, c.mail_from).campaign_id for c in copies)
        for address, copies in received.items()
    }
    assert all(seen == {first.id: 1, second.id: 1, third.id: 1} for seen in campaigns_of.values()), campaigns_of
    assert all(smtp_sink._offers[address] == 3 for address in REFUSED)  # refused once per campaign, never retried

    ports = [stack.bounce.smtp_port, *(replica.smtp_port for replica in stack.more_bounces)]
    for index, address in enumerate(RETURNED):
        [caught] = [c for c in received[address] if parse_return_path(stack.sender_config.internal_key,
                                                                      c.mail_from).campaign_id == first.id]  # fmt: skip
        dsn = dsn_for(caught.data, address, caught.mail_from)
        targets = ports if address in TWICE else [ports[index % 2]]
        await asyncio.gather(*(return_dsn(port, caught, address, dsn) for port in targets))

    done = await stack.wait_campaign(first.id, lambda c: c.counters.bounced == 3 + len(RETURNED))
    assert (done.counters.total, done.counters.sent, done.counters.bounced) == (total, 50, 13)
    bounces = await stack.bounce_stub.ListBounces(
        bounce_pb2.ListBouncesRequest(campaign_id=first.id), metadata=stack.metadata
    )
    recorded = Counter((b.email, b.source) for b in bounces.bounces)
    smtp, dsn = events_pb2.BOUNCE_SOURCE_SMTP, events_pb2.BOUNCE_SOURCE_DSN
    assert recorded == Counter({**{(a, smtp): 1 for a in REFUSED}, **{(a, dsn): 1 for a in RETURNED}})
    assert len(bounces.bounces) == 13

    async def counted() -> dict[str, int] | None:
        page = await stack.lists_stub.ListSubscribers(
            lists_pb2.ListSubscribersRequest(list_id=list_id, page_size=1000), metadata=stack.metadata
        )
        counts = {s.email: s.hard_bounce_count for s in page.subscribers}
        return counts if all(counts[a] == 1 for a in RETURNED) and all(counts[a] == 3 for a in REFUSED) else None

    counts = await poll(counted)
    assert all(counts[a] == 0 for a in RECIPIENTS[len(RETURNED) :])
    for campaign, sent, bounced in ((first, 50, 13), (second, 60, 3), (third, 60, 3)):
        latest = await stack.wait_campaign(campaign.id, lambda c: True)
        assert (latest.counters.sent, latest.counters.bounced) == (sent, bounced), campaign.name
