"""Erasing a subscriber reaches every service that held the address, even one that was down at the time."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import aiosmtplib
import psycopg
import pytest
from mailblast.v1 import auth_pb2, auth_pb2_grpc, bounce_pb2, campaigns_pb2, events_pb2, lists_pb2, lists_privacy_pb2
from psycopg import sql

from services.common import bus
from services.common.privacy import email_hash
from services.sender.consumers import TRANSACTIONAL_DURABLE as SENDER_TRANSACTIONAL
from services.sender.ledger import DeliveryResult, DeliveryStatus, Outcome
from tests.support.poll import poll
from tests.support.smtp import dsn_for

SENT = campaigns_pb2.CAMPAIGN_STATE_SENT
# Every schema a mailblast service owns.
SCHEMAS = ["auth", "lists", "campaigns", "sender", "bounce"]
ERASURE_DURABLES = ["campaigns-erasures", "sender-erasures", "bounce-erasures"]
TARGET = "Erase.Me@example.net"
OTHER = "keep.me@example.net"


async def traces(database_url: str, address: str) -> list[str]:
    """schema.table.column of each text column of the mailblast schemas holding the address, as given or lower-cased."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c"
            " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = ANY(%s) AND t.table_type = 'BASE TABLE'"
            " AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'ARRAY')",
            (SCHEMAS,),
        )
        found = []
        for schema, table, column in await cur.fetchall():
            query = sql.SQL("SELECT count(*) FROM {}.{} WHERE strpos({}::text, %s) > 0 OR strpos({}::text, %s) > 0")
            cell = sql.Identifier(column)
            hits = await conn.execute(
                query.format(sql.Identifier(schema), sql.Identifier(table), cell, cell), (address, address.lower())
            )
            if (await hits.fetchone())[0]:
                found.append(f"{schema}.{table}.{column}")
        return found


async def return_dsn(stack, caught, rcpt: str) -> None:
    """The receiving server sends back a DSN for `rcpt` to the message's VERP address (null reverse path)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.bounce.smtp_port, start_tls=False) as smtp:
        await smtp.mail("")
        await smtp.rcpt(caught.mail_from)
        await smtp.data(dsn_for(caught.data, rcpt, caught.mail_from))


async def subscriber_id(stack, address: str) -> int:
    """The id of the organisation's subscriber with this address."""
    found = await stack.lists_stub.SearchSubscribers(
        lists_pb2.SearchSubscribersRequest(email_contains=address.lower()), metadata=stack.metadata
    )
    [subscriber] = [s for s in found.subscribers if s.email.lower() == address.lower()]
    return subscriber.id


async def delivered_and_bounced(stack, smtp_sink) -> tuple[campaigns_pb2.Campaign, int]:
    """A campaign delivered to TARGET and OTHER, then a DSN for TARGET recorded; a test send to TARGET too."""
    list_id = await stack.create_list([TARGET, OTHER])
    campaign = await stack.send_campaign([list_id])
    await stack.wait_campaign(campaign.id, lambda c: c.state == SENT)
    [caught] = smtp_sink.received_by()[TARGET]
    await return_dsn(stack, caught, TARGET)
    counted = await stack.wait_campaign(campaign.id, lambda c: c.counters.bounced == 1)
    target = await subscriber_id(stack, TARGET)
    # Lists has stopped the subscriber (one hard bounce is enough here) and suppressed the address.
    await poll(lambda: _status(stack, target, lists_pb2.SUBSCRIBER_STATUS_ERROR_STOPPED))
    # The test send is withheld from the suppressed address, and the transactional ledger says so.
    await stack.campaigns_stub.SendTest(
        campaigns_pb2.SendTestRequest(campaign_id=campaign.id, to_address=TARGET), metadata=stack.metadata
    )
    database_url = stack.sender_config.database_url
    await poll(lambda: _holds(traces(database_url, TARGET), "sender.transactional_deliveries.email"))
    return counted, target


async def _holds(found, where: str) -> bool:
    return where in await found


async def _status(stack, subscriber: int, status: int) -> bool:
    found = await stack.lists_stub.GetSubscriber(
        lists_pb2.GetSubscriberRequest(subscriber_id=subscriber), metadata=stack.metadata
    )
    return found.status == status


async def erase(stack, subscriber: int) -> None:
    """Erase the subscriber as the admin's API token."""
    await stack.lists_stub.EraseSubscriber(
        lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=subscriber), metadata=stack.metadata
    )


async def counters(stack, campaign_id: int) -> campaigns_pb2.CampaignCounters:
    """The campaign's counters now."""
    campaign = await stack.campaigns_stub.GetCampaign(
        campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id), metadata=stack.metadata
    )
    return campaign.counters


@pytest.mark.stack(hard_bounce_threshold=1)
async def test_erasure_leaves_no_trace_of_the_address_and_the_campaign_figures_stand(
    stack, smtp_sink, database_url, internal_key
):
    # A campaign went to a subscriber, a DSN came back for them, a test send went to the same address.
    # The address then sits in lists, the campaign's recipients, both sender ledgers and the bounces.
    # Erasing the subscriber leaves it in no text column of any mailblast schema (neither as given nor
    # lower-cased), while the campaign's counters stay as they were; only the keyed hash remains, and the
    # other recipient is untouched. The audit log says who erased whom, with the hash and no address.
    campaign, target = await delivered_and_bounced(stack, smtp_sink)
    held = await traces(database_url, TARGET)
    for where in ("lists.subscribers.email", "lists.suppressions.email", "campaigns.campaign_deliveries.email",
                  "sender.deliveries.email", "sender.transactional_deliveries.email", "bounce.bounces.email",
                  "bounce.bounces.diagnostic"):  # fmt: skip
        assert where in held, held

    await erase(stack, target)
    await poll(lambda: _empty(traces(database_url, TARGET)))
    assert await counters(stack, campaign.id) == campaign.counters
    hashed = email_hash(internal_key, TARGET)
    bounces = await stack.bounce_stub.ListBounces(
        bounce_pb2.ListBouncesRequest(campaign_id=campaign.id), metadata=stack.metadata
    )
    [bounce] = bounces.bounces
    assert (bounce.email, bounce.diagnostic, bounce.kind, bounce.status) == (
        hashed,
        "",
        events_pb2.BOUNCE_KIND_HARD,
        "5.1.1",
    )
    assert "campaigns.campaign_deliveries.email" in await traces(database_url, OTHER)

    auth = auth_pb2_grpc.AuthServiceStub(stack.channel(stack.auth.grpc_port))
    events = await auth.ListAuditEvents(
        auth_pb2.ListAuditEventsRequest(action="subscriber.erased"), metadata=stack.metadata
    )
    [event] = events.events
    assert (event.target, event.service, event.source_ip) == (f"subscriber:{target}", "lists", "127.0.0.1")
    assert event.user_id > 0 and event.api_token_id > 0
    assert json.loads(event.detail_json) == {"email_hash": hashed}


async def _empty(found) -> bool:
    return not await found


@pytest.mark.stack(hard_bounce_threshold=1)
async def test_a_service_down_during_the_erasure_erases_when_back_and_late_mail_stays_erased(
    stack, smtp_sink, database_url, internal_key
):
    # The bounce service is stopped when the subscriber is erased: campaigns and the sender erase at once,
    # the bounces keep the address until bounce comes back and catches up from the stream. A DSN that
    # arrives after the erasure is recorded and counted with the keyed hash, never the address; a ledger
    # row the sender writes afterwards for the erased subscriber (a delivery that was under way) likewise.
    list_id = await stack.create_list([TARGET, OTHER])
    campaign = await stack.send_campaign([list_id])
    await stack.wait_campaign(campaign.id, lambda c: c.state == SENT)
    [caught] = smtp_sink.received_by()[TARGET]
    await return_dsn(stack, caught, TARGET)
    first = await stack.wait_campaign(campaign.id, lambda c: c.counters.bounced == 1)
    target = await subscriber_id(stack, TARGET)

    await stack.bounce.stop()
    try:
        await erase(stack, target)
        await poll(lambda: _only(traces(database_url, TARGET), {"bounce.bounces.email", "bounce.bounces.diagnostic"}))
    finally:
        await stack.restart_bounce()
    await poll(lambda: _empty(traces(database_url, TARGET)))

    # A second DSN for the same message comes back late: it is recorded with the hash (the recipient is
    # bounced already, so the counters stay).
    await return_dsn(stack, caught, TARGET)
    hashed = email_hash(internal_key, TARGET)

    async def two_bounces():
        found = await stack.bounce_stub.ListBounces(
            bounce_pb2.ListBouncesRequest(campaign_id=campaign.id), metadata=stack.metadata
        )
        return found.bounces if len(found.bounces) == 2 else None

    assert {(b.email, b.diagnostic) for b in await poll(two_bounces)} == {(hashed, "")}

    sender = stack.senders[0]
    late = Outcome.of(
        DeliveryResult(DeliveryStatus.SENT, 250, f"250 2.0.0 <{TARGET}> accepted"),
        organization_id=stack.organization_id, email=TARGET, previous=None, campaign_id=campaign.id + 1000,
        subscriber_id=target, occurred_at=datetime.now(UTC),
    )  # fmt: skip
    [written] = await sender.store.record([late])
    assert (written.email, written.smtp_message) == (hashed, "")
    claimed = await sender.store.claim(stack.organization_id, campaign.id + 2000, [(target, TARGET)], "test", 60)
    assert (claimed.claimed, claimed.withheld) == ({target}, {target: "erased"})
    assert await traces(database_url, TARGET) == []
    assert await counters(stack, campaign.id) == first.counters


async def _only(found, expected: set[str]) -> list[str] | None:
    value = await found
    return value if set(value) == expected else None


@pytest.mark.stack(hard_bounce_threshold=1)
async def test_a_redelivered_erasure_changes_nothing(stack, smtp_sink, database_url, internal_key):
    # JetStream redelivers an erasure (here: the same event published again under a new id, so the stream
    # keeps it). Every service takes it again without harm: one erased subscriber each, the same counters,
    # the same rows, still no trace of the address.
    campaign, target = await delivered_and_bounced(stack, smtp_sink)
    await erase(stack, target)
    await poll(lambda: _empty(traces(database_url, TARGET)))
    before = await _snapshot(database_url)
    async with stack.jetstream() as js:
        stored = await js.get_last_msg(bus.STREAM_PRIVACY, bus.SUBJECT_SUBSCRIBER_ERASED)
        event = events_pb2.SubscriberErased.FromString(stored.data)
        assert (event.organization_id, event.subscriber_id) == (stack.organization_id, target)
        assert (
            event.email_hash == email_hash(internal_key, TARGET) and TARGET.lower().encode() not in stored.data.lower()
        )
        ack = await js.publish(bus.SUBJECT_SUBSCRIBER_ERASED, stored.data, headers={"Nats-Msg-Id": "again"})
        assert ack.seq > stored.seq

        async def all_consumed():
            for durable in ERASURE_DURABLES:
                info = await js.consumer_info(bus.STREAM_PRIVACY, durable)
                if info.delivered.stream_seq < ack.seq or info.num_ack_pending or info.num_pending:
                    return False
            return True

        await poll(all_consumed)
    assert await _snapshot(database_url) == before
    assert await counters(stack, campaign.id) == campaign.counters
    assert await traces(database_url, TARGET) == []
    # The transactional consumer is untouched by erasures: nothing of it is pending.
    async with stack.jetstream() as js:
        assert (await js.consumer_info(bus.STREAM_SEND, SENDER_TRANSACTIONAL)).num_ack_pending == 0


async def _snapshot(database_url: str) -> dict[str, list]:
    """The erased-subscriber records and the rows an erasure rewrites, in every service."""
    queries = {
        "tombstones": "SELECT 'campaigns', organization_id, subscriber_id, email_hash FROM campaigns.erased_subscribers"
        " UNION ALL SELECT 'sender', organization_id, subscriber_id, email_hash FROM sender.erased_subscribers"
        " UNION ALL SELECT 'bounce', organization_id, subscriber_id, email_hash FROM bounce.erased_subscribers"
        " ORDER BY 1",
        "recipients": "SELECT campaign_id, subscriber_id, email, status FROM campaigns.campaign_deliveries"
        " ORDER BY 1, 2",
        "ledger": "SELECT campaign_id, subscriber_id, email, status, attempts, updated_at FROM sender.deliveries"
        " ORDER BY 1, 2",
        "transactional": "SELECT message_key, email, email_hash, status, updated_at"
        " FROM sender.transactional_deliveries ORDER BY 1",
        "bounces": "SELECT bounce_id, email, diagnostic, kind FROM bounce.bounces ORDER BY 1",
        "erasures": "SELECT organization_id, subscriber_id, email_hash FROM lists.erasures ORDER BY 1",
    }
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        out = {}
        for name, query in queries.items():
            cur = await conn.execute(query)
            out[name] = await cur.fetchall()
    assert len(out["tombstones"]) == 3 and len(out["erasures"]) == 1
    return out
