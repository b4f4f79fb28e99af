"""The send path end to end: a list to signed, TLS-delivered mail through all five services."""

from __future__ import annotations

import asyncio
import email
from email import policy
from email.message import EmailMessage

import aiosmtplib
import grpc
import pytest
from mailblast.v1 import bounce_pb2, campaigns_pb2, campaigns_pb2_grpc, events_pb2, lists_pb2

from services.common import bus
from services.common.identity import IDENTITY_HEADER, Principal
from services.common.mail import send_transactional
from services.common.verp import parse_return_path
from tests.support.dkim_verify import EVERY_VERIFIER, passing, verify_everywhere
from tests.support.lists import ListsStubs
from tests.support.poll import poll
from tests.support.smtp import dsn_for

SENT = campaigns_pb2.CAMPAIGN_STATE_SENT


def finished(campaign: campaigns_pb2.Campaign) -> bool:
    return campaign.state == SENT


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


async def test_thousand_recipients_once_each_over_tls_signed_and_personalised(stack, smtp_sink, dkim_keys, dns_server):
    # A campaign to 1,000 recipients reaches the STARTTLS sink exactly once per recipient, over TLS,
    # with personal fields filled (escaped in HTML, plain in text, RFC 2047 in the Japanese subject),
    # and both DKIM signatures (rsa-sha256, ed25519-sha256) verify against the keys published in DNS,
    # by dkimpy and by Mail::DKIM (rsa-sha256) and OpenDKIM (ed25519-sha256).
    emails = [f"user{i:04d}@example.net" for i in range(1000)]
    list_id = await stack.create_list(emails, fields={"company": "株式会社<テスト>"})
    campaign = await stack.send_campaign(
        [list_id],
        subject="{{ name }}様へ 秋のご案内",
        html_body="<p>{{ name }} / {{ company }}</p>",
        text_body="{{ name }} / {{ company }}",
    )
    await smtp_sink.wait_for(1000, timeout=240)
    done = await stack.wait_campaign(campaign.id, finished, timeout=120)
    assert (done.counters.total, done.counters.sent, done.counters.queued) == (1000, 1000, 0)

    received = smtp_sink.received_by()
    assert sorted(received) == emails
    assert all(len(copies) == 1 for copies in received.values())
    message_ids = set()
    for address, [caught] in received.items():
        assert caught.tls, f"{address} was delivered without TLS"
        ref = parse_return_path(stack.sender_config.internal_key, caught.mail_from)
        assert ref is not None and ref.campaign_id == campaign.id
        msg = parse(caught.data)
        local = address.split("@")[0]
        assert msg["Subject"] == f"名前 {local}様へ 秋のご案内"
        assert b"Subject: =?utf-8?" in caught.data.split(b"\r\n\r\n", 1)[0]
        assert msg.get_body(("plain",)).get_content().strip() == f"名前 {local} / 株式会社<テスト>"
        assert f"<p>名前 {local} / 株式会社&lt;テスト&gt;</p>" in msg.get_body(("html",)).get_content()
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        message_ids.add(msg["Message-ID"])
    assert len(message_ids) == 1000
    dkim_keys.publish(dns_server)
    checks = await asyncio.to_thread(verify_everywhere, [copies[0].data for copies in received.values()], dns_server)
    for address, message_checks in zip(received, checks, strict=True):
        assert passing(message_checks) == EVERY_VERIFIER, (address, message_checks)


async def test_temporary_refusals_are_retried_and_delivered_once(stack, smtp_sink):
    # A sink that answers 451 to some recipients for their first two offers: they are retried with
    # backoff and delivered exactly once; the campaign ends with everything sent.
    emails = [f"r{i}@example.net" for i in range(20)] + [f"grey{i}@example.net" for i in range(5)]
    smtp_sink.reply = lambda addr, seen: (
        "451 4.7.1 greylisted, try later" if addr.startswith("grey") and seen < 2 else None
    )
    list_id = await stack.create_list(emails)
    campaign = await stack.send_campaign([list_id])
    done = await stack.wait_campaign(campaign.id, finished, timeout=120)
    assert (done.counters.sent, done.counters.deferred, done.counters.bounced) == (25, 0, 0)
    received = smtp_sink.received_by()
    assert sorted(received) == sorted(emails)
    assert all(len(copies) == 1 for copies in received.values())
    assert all(smtp_sink._offers[f"grey{i}@example.net"] == 3 for i in range(5))


async def subscriber_by_email(stack, list_id: int, address: str) -> lists_pb2.Subscriber:
    page = await stack.lists_stub.ListSubscribers(
        lists_pb2.ListSubscribersRequest(list_id=list_id, page_size=1000), metadata=stack.metadata
    )
    return next(s for s in page.subscribers if s.email == address)


@pytest.mark.stack(hard_bounce_threshold=2)
async def test_permanent_refusal_bounces_and_error_stops_after_threshold(stack, smtp_sink):
    # A 550 for one recipient is a hard bounce: counted as bounced, never retried. After the second
    # campaign (threshold 2) the subscriber is error-stopped, and the third campaign skips them.
    smtp_sink.reply = lambda addr, seen: (
        "550 5.1.1 <gone@example.net>: user unknown" if addr.startswith("gone") else None
    )
    emails = ["gone@example.net", "a@example.net", "b@example.net"]
    list_id = await stack.create_list(emails)
    for round_no in (1, 2):
        campaign = await stack.send_campaign([list_id], name=f"round {round_no}")
        done = await stack.wait_campaign(campaign.id, finished)
        assert (done.counters.sent, done.counters.bounced, done.counters.deferred) == (2, 1, 0)

        async def counted(expected=round_no):
            sub = await subscriber_by_email(stack, list_id, "gone@example.net")
            return sub if sub.hard_bounce_count >= expected else None

        sub = await poll(counted)
        assert "5.1.1" in sub.last_bounce_reason
    assert sub.status == lists_pb2.SUBSCRIBER_STATUS_ERROR_STOPPED
    assert smtp_sink._offers["gone@example.net"] == 2  # refused once per campaign, never retried
    third = await stack.send_campaign([list_id], name="round 3")
    done = await stack.wait_campaign(third.id, finished)
    assert (done.counters.total, done.counters.sent, done.counters.bounced) == (2, 2, 0)
    assert smtp_sink._offers["gone@example.net"] == 2


async def test_dsn_is_attributed_to_its_recipient_and_counted(stack, smtp_sink):
    # The receiving server accepted the message but later returned a DSN to the VERP address: the
    # bounce listener attributes it to that campaign and recipient, the campaign counts it bounced.
    emails = ["x@example.net", "y@example.net", "z@example.net"]
    list_id = await stack.create_list(emails)
    campaign = await stack.send_campaign([list_id])
    await stack.wait_campaign(campaign.id, finished)
    [caught] = smtp_sink.received_by()["y@example.net"]
    # DSNs come with the null reverse path, MAIL FROM:<>.
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.bounce.smtp_port, start_tls=False) as smtp:
        await smtp.mail("")
        await smtp.rcpt(caught.mail_from)
        await smtp.data(dsn_for(caught.data, "y@example.net", caught.mail_from))
    done = await stack.wait_campaign(campaign.id, lambda c: c.counters.bounced == 1)
    assert (done.counters.sent, done.counters.bounced) == (2, 1)
    bounces = await stack.bounce_stub.ListBounces(
        bounce_pb2.ListBouncesRequest(campaign_id=campaign.id), metadata=stack.metadata
    )
    [record] = bounces.bounces
    assert (record.email, record.kind, record.source, record.status) == (
        "y@example.net",
        events_pb2.BOUNCE_KIND_HARD,
        events_pb2.BOUNCE_SOURCE_DSN,
        "5.1.1",
    )


async def test_bad_input_is_refused_clearly_and_nothing_is_injected(stack, smtp_sink):
    # Invalid addresses and CR/LF in names or fields are row errors at import; CR/LF in subject or
    # From name refuse the campaign; unknown and other organisations' ids are NOT_FOUND. The good rows
    # are delivered, and no delivered message carries an injected header.
    lists = stack.lists_stub
    created = await lists.CreateList(lists_pb2.CreateListRequest(name="mixed"), metadata=stack.metadata)
    rows = [
        lists_pb2.SubscriberInput(email="ok1@example.net", name="Good One"),
        lists_pb2.SubscriberInput(email="foo@", name="Bad address"),
        lists_pb2.SubscriberInput(email="inj1@example.net", name="Eve\r\nBcc: victim@example.org"),
        lists_pb2.SubscriberInput(email="inj2@example.net", attributes_json='{"company": "X\\nX-Injected: 1"}'),
        lists_pb2.SubscriberInput(email="ok2@example.net", name="Good Two"),
    ]
    reply = await lists.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=created.id, subscribers=rows), metadata=stack.metadata
    )
    assert reply.added == 2
    errors = {e.index: e.message for e in reply.errors}
    assert set(errors) == {1, 2, 3}
    assert "not an email address" in errors[1]

    campaigns = stack.campaigns_stub
    for field in ("subject", "from_name"):
        request = campaigns_pb2.CreateCampaignRequest(
            name="x", list_ids=[created.id], from_address="news@news.example.com", subject="s", text_body="t"
        )
        setattr(request, field, "Hello\r\nBcc: victim@example.org")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await campaigns.CreateCampaign(request, metadata=stack.metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{field} must not contain line breaks" in refused.value.details()

    campaign = await stack.send_campaign([created.id], subject="{{ name }} {{ company }}")
    await stack.wait_campaign(campaign.id, finished)
    received = smtp_sink.received_by()
    assert sorted(received) == ["ok1@example.net", "ok2@example.net"]
    for [caught] in received.values():
        msg = parse(caught.data)
        assert msg["Bcc"] is None and msg["X-Injected"] is None

    # A user of another organisation, as the console relays one.
    other = Principal(organization_id=999, scopes=("read", "send", "admin"), service="gateway")
    relayed_campaigns = campaigns_pb2_grpc.CampaignsServiceStub(stack.channel(stack.campaigns.grpc_port, "gateway"))
    relayed_lists = ListsStubs(stack.channel(stack.lists.grpc_port, "gateway"))
    for call, request in (
        (relayed_campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign.id)),
        (relayed_campaigns.SendCampaign, campaigns_pb2.SendCampaignRequest(campaign_id=campaign.id)),
        (relayed_campaigns.CancelCampaign, campaigns_pb2.CampaignRequest(campaign_id=campaign.id)),
        (
            relayed_campaigns.CreateCampaign,
            campaigns_pb2.CreateCampaignRequest(
                name="x", list_ids=[created.id], from_address="a@example.com", subject="s", text_body="t"
            ),
        ),
        (relayed_lists.GetList, lists_pb2.GetListRequest(list_id=created.id)),
    ):
        audience = "lists" if call is relayed_lists.GetList else "campaigns"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=[(IDENTITY_HEADER, stack.signer.sign(other, audience))])
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await campaigns.GetCampaign(campaigns_pb2.GetCampaignRequest(campaign_id=987654), metadata=stack.metadata)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await campaigns.GetCampaign(campaigns_pb2.GetCampaignRequest(campaign_id=campaign.id))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_one_trace_from_send_click_to_each_delivery(span_exporter, stack, smtp_sink):
    # The trace of a small campaign holds, under one trace id, the campaign send, the fan-out, the
    # batch publication, the sender's batch and one delivery span per recipient with the SMTP reply
    # code and the TLS flag.
    span_exporter.clear()
    list_id = await stack.create_list(["t1@example.net", "t2@example.net", "t3@example.net"])
    campaign = await stack.send_campaign([list_id])
    await stack.wait_campaign(campaign.id, finished)
    spans = span_exporter.get_finished_spans()
    [send] = [s for s in spans if s.name == "campaign.send"]
    trace_spans = [s for s in spans if s.context.trace_id == send.context.trace_id]
    names = {s.name for s in trace_spans}
    assert {"campaign.send", "campaign.fanout", "campaign.publish_batch", "send batch"} <= names
    assert any("CampaignsService/SendCampaign" in s.name for s in trace_spans)
    assert any("ListsService/StreamRecipients" in s.name for s in trace_spans)
    deliveries = [s for s in trace_spans if s.name == "deliver"]
    assert len(deliveries) == 3
    assert all(s.attributes["smtp.reply_code"] == 250 and s.attributes["smtp.tls"] is True for s in deliveries)


async def test_transactional_rejection_is_no_subscriber_bounce(stack, smtp_sink, nats_server):
    # A transactional message refused with 550 is reported with campaign 0 and its message key; the
    # campaigns service ignores it and the bounce service records no bounce for it (no subscriber stands
    # behind it) and keeps working: a campaign's 550 right after is still recorded and counted.
    smtp_sink.reply = lambda addr, seen: "550 5.1.1 user unknown" if addr.startswith("gone") else None
    nc = await nats_server.connect()
    try:
        js = nc.jetstream()
        reports = await js.pull_subscribe(bus.SUBJECT_DELIVERY_REPORT, stream=bus.STREAM_DELIVERY)
        message = events_pb2.TransactionalMessage(
            organization_id=stack.organization_id,
            message_key="auth.reset.1.a1",
            to_address="gone-tx@example.net",
            to_name="Gone",
            content=events_pb2.MessageContent(
                from_address="noreply@news.example.com", subject="Reset {{ name }}", text_body="Link: {{ link }}"
            ),
            variables_json='{"link": "https://x.example/r"}',
            category="auth.password_reset",
        )
        await send_transactional(js, message)
        [delivered] = await reports.fetch(1, timeout=30)
        [event] = events_pb2.DeliveryReport.FromString(delivered.data).events
        assert (event.campaign_id, event.message_key, event.outcome, event.smtp_code) == (
            0,
            "auth.reset.1.a1",
            events_pb2.DELIVERY_OUTCOME_REJECTED,
            550,
        )

        list_id = await stack.create_list(["gone@example.net", "ok@example.net"])
        campaign = await stack.send_campaign([list_id])
        done = await stack.wait_campaign(campaign.id, lambda c: finished(c) and c.counters.bounced == 1)
        assert (done.counters.sent, done.counters.bounced) == (1, 1)
        bounces = await js.pull_subscribe(bus.SUBJECT_BOUNCE_RECORDED, stream=bus.STREAM_BOUNCE)
        recorded = [events_pb2.BounceEvent.FromString(m.data) for m in await bounces.fetch(10, timeout=2)]
        assert [(b.campaign_id, b.email) for b in recorded] == [(campaign.id, "gone@example.net")]
    finally:
        await nc.close()
