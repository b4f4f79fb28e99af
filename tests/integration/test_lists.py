"""The lists service on real PostgreSQL and NATS, called over real gRPC with signed identities."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import psycopg
import pytest
import pytest_asyncio
from mailblast.v1 import events_pb2, lists_pb2

from services.common import bus
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.lists.config import Config
from services.lists.service import Running, start
from tests.support.lists import ListsStubs
from tests.support.nats import NatsServer

ORG = 1
OTHER_ORG = 2


def as_user(signer: IdentitySigner, organization_id: int = ORG, scopes=("read", "send")) -> list:
    """Metadata of a user of the organisation, relayed by the console as a signed identity (on `stub`)."""
    principal = Principal(organization_id, user_id=7, scopes=tuple(scopes), role="editor", service="gateway")
    return [(IDENTITY_HEADER, signer.sign(principal, "lists"))]


def as_campaigns(signer: IdentitySigner, organization_id: int = ORG) -> list:
    """Metadata of the campaigns service working for an organisation in the background (on `campaigns_stub`)."""
    return [(IDENTITY_HEADER, signer.sign(Principal(organization_id=organization_id, service="campaigns"), "lists"))]


@pytest_asyncio.fixture
async def lists_service(database_url: str, nats_server: NatsServer, internal_key: bytes, pki):
    """A started lists service whose bounce consumer the test steps by hand."""
    running = await start(
        Config(
            database_url=database_url,
            nats_url=nats_server.url,
            nats_creds_file=nats_server.creds("lists"),
            internal_key=internal_key,
            grpc_tls=pki.tls("lists"),
            grpc_bind="127.0.0.1:0",
            consume_in_background=False,
        )
    )
    try:
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture
async def stub(lists_service: Running, pki):
    """A client of the started lists service with the console's certificate."""
    channel = pki.channel(lists_service.grpc_port, "gateway")
    try:
        yield ListsStubs(channel)
    finally:
        await channel.close()


@pytest_asyncio.fixture
async def campaigns_stub(lists_service: Running, pki):
    """A client of the started lists service with the campaigns service's certificate."""
    channel = pki.channel(lists_service.grpc_port, "campaigns")
    try:
        yield ListsStubs(channel)
    finally:
        await channel.close()


@pytest_asyncio.fixture
async def js(nats_server: NatsServer):
    """A JetStream context on the test's NATS server, publishing what bounce would (and reading dead letters)."""
    nc, js = await bus.connect(nats_server.url, "test", nats_server.creds("admin"))
    try:
        yield js
    finally:
        await nc.close()


def rows(*emails: str) -> list[lists_pb2.SubscriberInput]:
    """Plain subscriber rows."""
    return [lists_pb2.SubscriberInput(email=e) for e in emails]


async def new_list(stub, signer: IdentitySigner, name: str = "news", organization_id: int = ORG) -> int:
    """Create a list, return its id."""
    created = await stub.CreateList(lists_pb2.CreateListRequest(name=name), metadata=as_user(signer, organization_id))
    return created.id


async def all_subscribers(stub, signer: IdentitySigner, list_id: int) -> list[lists_pb2.Subscriber]:
    """Every subscriber of a list, page by page."""
    found, token = [], ""
    while True:
        page = await stub.ListSubscribers(
            lists_pb2.ListSubscribersRequest(list_id=list_id, page_token=token), metadata=as_user(signer)
        )
        found.extend(page.subscribers)
        token = page.next_page_token
        if not token:
            return found


async def stream(stub, metadata, list_ids, chunk_size=0, after=0) -> list[list[lists_pb2.Recipient]]:
    """All chunks StreamRecipients yields."""
    call = stub.StreamRecipients(
        lists_pb2.StreamRecipientsRequest(list_ids=list_ids, chunk_size=chunk_size, after_subscriber_id=after),
        metadata=metadata,
    )
    return [list(chunk.recipients) async for chunk in call]


async def consume(running: Running, expected: int, timeout: float = 20.0) -> None:
    """Step the bounce consumer until it has handled `expected` messages."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < expected:
        assert time.monotonic() < deadline, f"only {seen} of {expected} bounce messages arrived"
        seen += await running.bounce_consumer.run_once(timeout=1.0)


def bounce(bounce_id: str, subscriber_id: int, kind=events_pb2.BOUNCE_KIND_HARD, **fields) -> events_pb2.BounceEvent:
    """A bounce event as the bounce service publishes it."""
    return events_pb2.BounceEvent(
        bounce_id=bounce_id,
        organization_id=ORG,
        campaign_id=1,
        subscriber_id=subscriber_id,
        kind=kind,
        status=fields.get("status", "5.1.1"),
        smtp_code=fields.get("smtp_code", 550),
        diagnostic=fields.get("diagnostic", "mailbox unknown"),
    )


async def test_bad_rows_reported_good_rows_stored(stub, signer: IdentitySigner, database_url: str):
    # A CSV-like import with a broken address, header-injection attempts in the name and in attribute
    # values, a bad attribute name and a non-object attributes value: each bad row is reported by
    # index with a readable message, the good rows are stored, and nothing injected reaches the table.
    list_id = await new_list(stub, signer)
    request = lists_pb2.AddSubscribersRequest(
        list_id=list_id,
        subscribers=[
            lists_pb2.SubscriberInput(email="ok1@example.org", name="Ok One", attributes_json='{"plan": "gold"}'),
            lists_pb2.SubscriberInput(email="foo@"),
            lists_pb2.SubscriberInput(email="inj1@example.org", name="Eve\r\nBcc: victim@example.net"),
            lists_pb2.SubscriberInput(email="inj2@example.org", attributes_json='{"x": "a\\r\\nBcc: v@example.net"}'),
            lists_pb2.SubscriberInput(email="inj3@example.org", attributes_json='{"bad key": 1}'),
            lists_pb2.SubscriberInput(email="inj4@example.org", attributes_json="[1, 2]"),
            lists_pb2.SubscriberInput(email="ユーザー@例え.jp", name="山田"),
            lists_pb2.SubscriberInput(email="long@example.org", name="x" * 201),
        ],
    )
    reply = await stub.AddSubscribers(request, metadata=as_user(signer))
    assert (reply.added, reply.updated) == (2, 0)
    errors = {e.index: e for e in reply.errors}
    assert sorted(errors) == [1, 2, 3, 4, 5, 7]
    assert errors[1].email == "foo@"
    assert errors[1].message.startswith("'foo@' is not an email address: ")
    assert "line break" in errors[2].message
    assert "attribute 'x'" in errors[3].message
    assert "'bad key'" in errors[4].message
    assert "JSON object" in errors[5].message
    assert "200" in errors[7].message

    stored = await all_subscribers(stub, signer, list_id)
    assert [(s.email, s.name) for s in stored] == [("ok1@example.org", "Ok One"), ("ユーザー@例え.jp", "山田")]
    assert json.loads(stored[0].attributes_json) == {"plan": "gold"}
    assert all(s.status == lists_pb2.SUBSCRIBER_STATUS_ACTIVE for s in stored)
    with psycopg.connect(database_url) as conn:
        injected = conn.execute(
            "SELECT count(*) FROM lists.subscribers WHERE name ~ '[\\r\\n]' OR attributes::text LIKE '%%Bcc%%'"
            " OR email LIKE 'inj%%'"
        ).fetchone()[0]
    assert injected == 0

    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await stub.AddSubscribers(
            lists_pb2.AddSubscribersRequest(list_id=list_id, subscribers=rows(*["a@example.org"] * 10_001)),
            metadata=as_user(signer),
        )
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_duplicates_merged_and_existing_updated(stub, signer: IdentitySigner, database_url: str):
    # The same address twice in one request (in different case) is stored once with the last row's
    # data; adding an existing subscriber to another list updates it without resetting an
    # unsubscribed status.
    first = await new_list(stub, signer, "first")
    second = await new_list(stub, signer, "second")
    reply = await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=first,
            subscribers=[
                lists_pb2.SubscriberInput(email="Dup@Example.org", name="Old"),
                lists_pb2.SubscriberInput(email="other@example.org"),
                lists_pb2.SubscriberInput(email="dup@EXAMPLE.ORG", name="New", attributes_json='{"n": 2}'),
            ],
        ),
        metadata=as_user(signer),
    )
    assert (reply.added, reply.updated, list(reply.errors)) == (2, 0, [])
    [dup] = [s for s in await all_subscribers(stub, signer, first) if s.email.startswith("dup")]
    assert (dup.email, dup.name, json.loads(dup.attributes_json)) == ("dup@example.org", "New", {"n": 2})

    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE lists.subscribers SET status = 'unsubscribed' WHERE id = %s", (dup.id,))
    again = await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=second, subscribers=[lists_pb2.SubscriberInput(email="DUP@example.org", name="Newer")]
        ),
        metadata=as_user(signer),
    )
    assert (again.added, again.updated) == (0, 1)
    [moved] = await all_subscribers(stub, signer, second)
    assert moved.id == dup.id and moved.name == "Newer"
    assert moved.status == lists_pb2.SUBSCRIBER_STATUS_UNSUBSCRIBED
    counts = {
        item.name: (item.subscriber_count, item.active_count)
        for item in (await stub.ListLists(lists_pb2.ListListsRequest(), metadata=as_user(signer))).lists
    }
    assert counts == {"first": (2, 1), "second": (1, 0)}


async def test_list_subscribers_pages_by_id(stub, signer: IdentitySigner):
    # 250 subscribers come back in pages of 100, 100 and 50, in id order, each once; a forged page
    # token is refused.
    list_id = await new_list(stub, signer)
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=list_id, subscribers=rows(*(f"u{i}@example.org" for i in range(250)))),
        metadata=as_user(signer),
    )
    sizes, ids, token = [], [], ""
    while True:
        page = await stub.ListSubscribers(
            lists_pb2.ListSubscribersRequest(list_id=list_id, page_size=100, page_token=token),
            metadata=as_user(signer),
        )
        sizes.append(len(page.subscribers))
        ids.extend(s.id for s in page.subscribers)
        token = page.next_page_token
        if not token:
            break
    assert sizes == [100, 100, 50]
    assert ids == sorted(set(ids)) and len(ids) == 250
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await stub.ListSubscribers(
            lists_pb2.ListSubscribersRequest(list_id=list_id, page_token="bogus!"), metadata=as_user(signer)
        )
    assert forged.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_recipients_active_once_in_order(stub, campaigns_stub, signer: IdentitySigner, database_url: str):
    # Two overlapping lists: every active subscriber on either list is streamed exactly once, in id
    # order, in chunks of the requested size; unsubscribed and error-stopped ones are left out. The
    # campaigns service may stream for the organisation; a user needs the read scope.
    a = await new_list(stub, signer, "a")
    b = await new_list(stub, signer, "b")
    c = await new_list(stub, signer, "c")
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=a, subscribers=rows(*(f"s{i}@example.org" for i in range(0, 8)))),
        metadata=as_user(signer),
    )
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=b, subscribers=rows(*(f"s{i}@example.org" for i in range(5, 12)))),
        metadata=as_user(signer),
    )
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=c, subscribers=rows("only-c@example.org")), metadata=as_user(signer)
    )
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE lists.subscribers SET status = 'unsubscribed' WHERE email = 's1@example.org'")
        conn.execute("UPDATE lists.subscribers SET status = 'error_stopped' WHERE email = 's6@example.org'")

    chunks = await stream(campaigns_stub, as_campaigns(signer), [b, a, b], chunk_size=3)
    recipients = [r for chunk in chunks for r in chunk]
    expected = {f"s{i}@example.org" for i in range(12) if i not in (1, 6)}
    emails = [r.email for r in recipients]
    assert sorted(emails) == sorted(expected)
    assert [len(chunk) for chunk in chunks] == [3, 3, 3, 1]
    ids = [r.subscriber_id for r in recipients]
    assert ids == sorted(set(ids))
    # A fan-out interrupted after the fourth recipient resumes with the fifth.
    resumed = await stream(campaigns_stub, as_campaigns(signer), [a, b], chunk_size=3, after=ids[3])
    assert [r.subscriber_id for chunk in resumed for r in chunk] == ids[4:]

    # The console's users stream the same (people calling with an API token need the read scope: test_lists_auth).
    by_user = await stream(stub, as_user(signer, scopes=("read",)), [a])
    assert {r.email for chunk in by_user for r in chunk} == {f"s{i}@example.org" for i in (0, 2, 3, 4, 5, 7)}
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stream(campaigns_stub, as_campaigns(signer), [])
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Without AUTH_ADDR only signed identities are accepted.
    for metadata in ([], [("authorization", "Bearer mb_12345678_" + "x" * 43)]):
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stream(stub, metadata, [a])
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_other_organisation_refused_everywhere(stub, campaigns_stub, signer: IdentitySigner):
    # Another organisation (as a user or through a service) cannot read, add to, page through or
    # stream a list, nor read a subscriber, of the first organisation: NOT_FOUND every time, and its
    # list overview shows only its own lists.
    list_id = await new_list(stub, signer)
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=list_id, subscribers=rows("a@example.org")), metadata=as_user(signer)
    )
    [subscriber] = await all_subscribers(stub, signer, list_id)
    theirs = await new_list(stub, signer, "theirs", organization_id=OTHER_ORG)
    other = as_user(signer, OTHER_ORG, scopes=("read", "send", "admin"))

    calls = [
        stub.GetList(lists_pb2.GetListRequest(list_id=list_id), metadata=other),
        stub.AddSubscribers(
            lists_pb2.AddSubscribersRequest(list_id=list_id, subscribers=rows("x@example.org")), metadata=other
        ),
        stub.ListSubscribers(lists_pb2.ListSubscribersRequest(list_id=list_id), metadata=other),
        stub.GetSubscriber(lists_pb2.GetSubscriberRequest(subscriber_id=subscriber.id), metadata=other),
        stream(stub, other, [list_id]),
        stream(campaigns_stub, as_campaigns(signer, OTHER_ORG), [theirs, list_id]),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    listed = (await stub.ListLists(lists_pb2.ListListsRequest(), metadata=other)).lists
    assert [item.id for item in listed] == [theirs]
    assert [s.email for s in await all_subscribers(stub, signer, list_id)] == ["a@example.org"]


async def test_hard_bounces_stop_subscriber(
    lists_service: Running, stub, campaigns_stub, js, signer: IdentitySigner, database_url
):
    # Hard bounces published on NATS count once per bounce id; at the third distinct one the subscriber
    # is error-stopped, recorded in its history and no longer streamed; re-importing it does not
    # reactivate it. A soft bounce only leaves its reason; a complaint marks the subscriber complained.
    # Both the error stop and the complaint put the address on the suppression list.
    list_id = await new_list(stub, signer)
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=list_id, subscribers=rows("hard@example.org", "soft@example.org", "angry@example.org")
        ),
        metadata=as_user(signer),
    )
    by_email = {s.email: s for s in await all_subscribers(stub, signer, list_id)}
    hard, soft, angry = (by_email[f"{n}@example.org"] for n in ("hard", "soft", "angry"))

    for event in [bounce("b1", hard.id), bounce("b1", hard.id), bounce("b2", hard.id)]:
        await bus.publish(js, bus.SUBJECT_BOUNCE_RECORDED, event)
    await consume(lists_service, 3)
    after_two = await stub.GetSubscriber(
        lists_pb2.GetSubscriberRequest(subscriber_id=hard.id), metadata=as_user(signer)
    )
    assert after_two.hard_bounce_count == 2
    assert after_two.status == lists_pb2.SUBSCRIBER_STATUS_ACTIVE
    assert after_two.last_bounce_reason == "5.1.1 550 mailbox unknown"

    await bus.publish(js, bus.SUBJECT_BOUNCE_RECORDED, bounce("b3", hard.id, diagnostic="no such user"))
    await bus.publish(
        js,
        bus.SUBJECT_BOUNCE_RECORDED,
        bounce("s1", soft.id, events_pb2.BOUNCE_KIND_SOFT, status="4.2.2", smtp_code=452, diagnostic="mailbox full"),
    )
    await bus.publish(js, bus.SUBJECT_BOUNCE_RECORDED, bounce("c1", angry.id, events_pb2.BOUNCE_KIND_COMPLAINT))
    await consume(lists_service, 3)

    stopped = await stub.GetSubscriber(lists_pb2.GetSubscriberRequest(subscriber_id=hard.id), metadata=as_user(signer))
    assert stopped.status == lists_pb2.SUBSCRIBER_STATUS_ERROR_STOPPED
    assert stopped.hard_bounce_count == 3
    assert stopped.last_bounce_reason == "5.1.1 550 no such user"
    softened = await stub.GetSubscriber(lists_pb2.GetSubscriberRequest(subscriber_id=soft.id), metadata=as_user(signer))
    assert softened.status == lists_pb2.SUBSCRIBER_STATUS_ACTIVE and softened.hard_bounce_count == 0
    assert softened.last_bounce_reason == "4.2.2 452 mailbox full"
    complained = await stub.GetSubscriber(
        lists_pb2.GetSubscriberRequest(subscriber_id=angry.id), metadata=as_user(signer)
    )
    assert complained.status == lists_pb2.SUBSCRIBER_STATUS_COMPLAINED

    recipients = [r.email for chunk in await stream(campaigns_stub, as_campaigns(signer), [list_id]) for r in chunk]
    assert recipients == ["soft@example.org"]
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=list_id, subscribers=rows("hard@example.org")), metadata=as_user(signer)
    )
    recipients = [r.email for chunk in await stream(campaigns_stub, as_campaigns(signer), [list_id]) for r in chunk]
    assert recipients == ["soft@example.org"]

    with psycopg.connect(database_url) as conn:
        history = conn.execute(
            "SELECT subscriber_id, old_status, new_status, cause FROM lists.subscriber_events"
            " WHERE cause <> 'added' ORDER BY id"
        ).fetchall()
    assert history == [
        (hard.id, "active", "error_stopped", "hard_bounce"),
        (angry.id, "active", "complained", "complaint"),
    ]
    with psycopg.connect(database_url) as conn:
        suppressed = conn.execute("SELECT email, reason FROM lists.suppressions ORDER BY email").fetchall()
    assert suppressed == [("angry@example.org", "complaint"), ("hard@example.org", "hard_bounce")]


async def test_undecodable_payload_dead_lettered(lists_service: Running, stub, js, signer: IdentitySigner):
    # A payload that is not a BounceEvent goes to the dead-letter stream with its reason, and the
    # consumer goes on to apply the next, valid event.
    list_id = await new_list(stub, signer)
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=list_id, subscribers=rows("c@example.org")), metadata=as_user(signer)
    )
    [subscriber] = await all_subscribers(stub, signer, list_id)
    garbage = b"not a protobuf \xff\xff"
    await js.publish(bus.SUBJECT_BOUNCE_RECORDED, garbage)
    await bus.publish(js, bus.SUBJECT_BOUNCE_RECORDED, bounce("c1", subscriber.id, events_pb2.BOUNCE_KIND_COMPLAINT))
    await consume(lists_service, 2)

    dead = await js.get_last_msg(bus.STREAM_DEAD_LETTER, f"{bus.SUBJECT_DEAD_LETTER}.{bus.SUBJECT_BOUNCE_RECORDED}")
    assert dead.data == garbage
    assert "not a BounceEvent" in dead.headers["Mailblast-Dead-Reason"]
    applied = await stub.GetSubscriber(
        lists_pb2.GetSubscriberRequest(subscriber_id=subscriber.id), metadata=as_user(signer)
    )
    assert applied.status == lists_pb2.SUBSCRIBER_STATUS_COMPLAINED
    # Nothing is left for redelivery: the dead letter was terminated, the event acknowledged.
    assert await lists_service.bounce_consumer.run_once(timeout=0.5) == 0


async def test_background_consumer_applies_bounces(database_url, nats_server, internal_key, signer, js, pki):
    # Started as in production, the service consumes bounces on its own: with a threshold of one, a
    # single hard bounce published on NATS error-stops the subscriber shortly after.
    running = await start(
        Config(
            database_url=database_url,
            nats_url=nats_server.url,
            nats_creds_file=nats_server.creds("lists"),
            internal_key=internal_key,
            grpc_tls=pki.tls("lists"),
            grpc_bind="127.0.0.1:0",
            hard_bounce_threshold=1,
        )
    )
    channel = pki.channel(running.grpc_port, "gateway")
    try:
        stub = ListsStubs(channel)
        list_id = await new_list(stub, signer)
        await stub.AddSubscribers(
            lists_pb2.AddSubscribersRequest(list_id=list_id, subscribers=rows("gone@example.org")),
            metadata=as_user(signer),
        )
        [subscriber] = await all_subscribers(stub, signer, list_id)
        await bus.publish(js, bus.SUBJECT_BOUNCE_RECORDED, bounce("only", subscriber.id))
        deadline = time.monotonic() + 20
        while True:
            seen = await stub.GetSubscriber(
                lists_pb2.GetSubscriberRequest(subscriber_id=subscriber.id), metadata=as_user(signer)
            )
            if seen.status == lists_pb2.SUBSCRIBER_STATUS_ERROR_STOPPED:
                break
            assert time.monotonic() < deadline, "the background consumer did not apply the bounce"
            await asyncio.sleep(0.05)
        assert seen.hard_bounce_count == 1
    finally:
        await channel.close()
        await running.stop()
