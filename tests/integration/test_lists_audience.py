"""Segments, suppression, unsubscribe, double opt-in signup, erasure and organisation scoping of the lists
service, on real PostgreSQL and NATS over gRPC."""

from __future__ import annotations

import json

import grpc
import psycopg
import pytest
from mailblast.v1 import (
    events_pb2,
    lists_fields_pb2,
    lists_imports_pb2,
    lists_pb2,
    lists_privacy_pb2,
    lists_segments_pb2,
    lists_signup_pb2,
    lists_suppression_pb2,
)

from services.common import bus
from services.common.identity import IDENTITY_HEADER, Principal
from services.common.verp import RecipientRef, unsubscribe_token
from tests.integration import test_lists as base
from tests.integration.test_lists import ORG, OTHER_ORG, as_campaigns, as_user, new_list, stream
from tests.integration.test_lists_import import ADMIN, define_fields

lists_service = base.lists_service
stub = base.stub
campaigns_stub = base.campaigns_stub
js = base.js


def as_gateway(signer) -> list:
    """The gateway relaying a public request: a service identity with no organisation."""
    return [(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service="gateway"), "lists"))]


async def set_sender(stub, signer, address: str = "news@example.jp", organization_id: int = ORG) -> None:
    """An admin sets the sender of list mail (forms need it for their confirmation mail)."""
    await stub.UpdateSettings(
        lists_signup_pb2.ListsSettings(sender_address=address, sender_name="Acme"),
        metadata=as_user(signer, organization_id, ADMIN),
    )


async def seed(stub, signer) -> tuple[int, int, dict[str, int]]:
    """Two lists and five subscribers with typed fields; return list ids and ids by address."""
    await define_fields(stub, signer)
    news = await new_list(stub, signer, "news")
    vip = await new_list(stub, signer, "vip")
    people = [
        ("taro@example.jp", "山田 太郎", {"pref": "東京都", "points": 120, "plan": "gold", "birthday": "1990-04-01"}),
        ("hanako@example.jp", "佐藤 花子", {"pref": "大阪府", "points": 30, "plan": "silver"}),
        ("ichiro@example.com", "Ichiro", {"pref": "東京都", "points": 5}),
        ("o'brien@example.com", "O'Brien", {"pref": "x'; DROP TABLE subscribers; --"}),
        ("jiro@example.com", "Jiro", {}),
    ]
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=news,
            subscribers=[
                lists_pb2.SubscriberInput(email=e, name=n, attributes_json=json.dumps(a, ensure_ascii=False))
                for e, n, a in people
            ],
        ),
        metadata=as_user(signer),
    )
    await stub.AddSubscribers(
        # AddSubscribers replaces name and fields, so the second list gets the same row.
        lists_pb2.AddSubscribersRequest(
            list_id=vip,
            subscribers=[
                lists_pb2.SubscriberInput(
                    email=people[0][0], name=people[0][1], attributes_json=json.dumps(people[0][2], ensure_ascii=False)
                )
            ],
        ),
        metadata=as_user(signer),
    )
    found = await stub.SearchSubscribers(lists_pb2.SearchSubscribersRequest(), metadata=as_user(signer))
    return news, vip, {s.email: s.id for s in found.subscribers}


async def preview(stub, signer, tree: dict) -> list[str]:
    """Addresses a condition tree selects, sorted."""
    reply = await stub.PreviewSegment(
        lists_segments_pb2.PreviewSegmentRequest(conditions_json=json.dumps(tree, ensure_ascii=False), sample_size=100),
        metadata=as_user(signer),
    )
    assert reply.count == len(reply.sample)
    return sorted(s.email for s in reply.sample)


async def test_segment_conditions_against_known_data(lists_service, stub, campaigns_stub, signer):
    # Condition trees of every kind select exactly the subscribers they describe: text operators on
    # address and name, typed operators on number/date/choice fields, list membership, nested any/all.
    _news, vip, _ = await seed(stub, signer)
    cases = [
        ({"field": "email", "op": "contains", "value": "example.jp"}, ["hanako@example.jp", "taro@example.jp"]),
        ({"field": "email", "op": "starts_with", "value": "ICH"}, ["ichiro@example.com"]),
        ({"field": "name", "op": "contains", "value": "山田"}, ["taro@example.jp"]),
        ({"field": "custom", "key": "points", "op": "gt", "value": 29}, ["hanako@example.jp", "taro@example.jp"]),
        (
            {"field": "custom", "key": "points", "op": "between", "value": [5, 30]},
            ["hanako@example.jp", "ichiro@example.com"],
        ),
        (
            {"field": "custom", "key": "plan", "op": "in", "value": ["gold", "silver"]},
            ["hanako@example.jp", "taro@example.jp"],
        ),
        ({"field": "custom", "key": "birthday", "op": "lt", "value": "1991-01-01"}, ["taro@example.jp"]),
        ({"field": "custom", "key": "pref", "op": "is_empty"}, ["jiro@example.com"]),
        ({"field": "list", "op": "eq", "value": vip}, ["taro@example.jp"]),
        (
            {"field": "list", "op": "ne", "value": vip},
            ["hanako@example.jp", "ichiro@example.com", "jiro@example.com", "o'brien@example.com"],
        ),
        ({"field": "status", "op": "ne", "value": "active"}, []),
        (
            {"field": "created_at", "op": "gt", "value": "2000-01-01"},
            ["hanako@example.jp", "ichiro@example.com", "jiro@example.com", "o'brien@example.com", "taro@example.jp"],
        ),
    ]
    for condition, expected in cases:
        assert await preview(stub, signer, {"match": "all", "conditions": [condition]}) == expected, condition
    nested = {
        "match": "any",
        "conditions": [
            {"field": "custom", "key": "plan", "op": "eq", "value": "silver"},
            {
                "match": "all",
                "conditions": [
                    {"field": "custom", "key": "pref", "op": "eq", "value": "東京都"},
                    {"field": "custom", "key": "points", "op": "lt", "value": 100},
                ],
            },
        ],
    }
    assert await preview(stub, signer, nested) == ["hanako@example.jp", "ichiro@example.com"]
    with pytest.raises(grpc.aio.AioRpcError) as engagement:
        await preview(stub, signer, {"conditions": [{"field": "opened", "op": "within_days", "value": 30}]})
    assert engagement.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # A saved segment is a campaign target: StreamRecipients takes its id next to list ids.
    saved = await stub.CreateSegment(
        lists_segments_pb2.SegmentInput(
            name="tokyo", conditions_json=json.dumps({"conditions": [nested["conditions"][1]]})
        ),
        metadata=as_user(signer),
    )
    chunks = await stream_segments(campaigns_stub, signer, [saved.id])
    assert [r.email for r in chunks] == ["ichiro@example.com"]


async def stream_segments(stub, signer, segment_ids, list_ids=()) -> list[lists_pb2.Recipient]:
    """Every recipient StreamRecipients yields for segments (and lists)."""
    call = stub.StreamRecipients(
        lists_pb2.StreamRecipientsRequest(list_ids=list(list_ids), segment_ids=segment_ids),
        metadata=as_campaigns(signer),
    )
    return [r async for chunk in call for r in chunk.recipients]


async def test_sql_smuggling_through_field_names_and_values(lists_service, stub, signer, database_url):
    # Field names that are SQL, operators and values carrying quotes, comments and LIKE wildcards are
    # either refused as unknown or matched literally: nothing is executed and the table is intact.
    await seed(stub, signer)
    hostile_keys = ["pref') OR 1=1 --", "pref'); DROP TABLE lists.subscribers; --", 'a" OR "1"="1', "attributes"]
    for key in hostile_keys:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await preview(stub, signer, {"conditions": [{"field": "custom", "key": key, "op": "eq", "value": "x"}]})
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for field_name, op in [("email; DELETE FROM subscribers", "eq"), ("email", "= '' OR 1=1 --")]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await preview(stub, signer, {"conditions": [{"field": field_name, "op": op, "value": "x"}]})
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    literal = [
        (
            {"field": "custom", "key": "pref", "op": "eq", "value": "x'; DROP TABLE subscribers; --"},
            ["o'brien@example.com"],
        ),
        ({"field": "email", "op": "eq", "value": "' OR '1'='1"}, []),
        ({"field": "email", "op": "contains", "value": "%"}, []),
        ({"field": "email", "op": "contains", "value": "_"}, []),
        ({"field": "name", "op": "contains", "value": "O'B"}, ["o'brien@example.com"]),
        ({"field": "status", "op": "in", "value": ["active"]}, 5),
    ]
    for condition, expected in literal:
        got = await preview(stub, signer, {"conditions": [condition]})
        assert (len(got) if isinstance(expected, int) else got) == expected, condition
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await preview(stub, signer, {"conditions": [{"field": "status", "op": "eq", "value": "active' OR 'a'='a"}]})
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SearchSubscribers(
            lists_pb2.SearchSubscribersRequest(field_key="pref') OR TRUE --", field_value="x"), metadata=as_user(signer)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM lists.subscribers").fetchone()[0] == 5


async def test_search_and_keyset_paging(lists_service, stub, signer):
    # Search by address prefix, name, status, list and custom field pages by id without repeats and
    # gives an estimated total.
    _news, vip, ids = await seed(stub, signer)
    page1 = await stub.SearchSubscribers(lists_pb2.SearchSubscribersRequest(page_size=2), metadata=as_user(signer))
    page2 = await stub.SearchSubscribers(
        lists_pb2.SearchSubscribersRequest(page_size=2, page_token=page1.next_page_token), metadata=as_user(signer)
    )
    ids_seen = [s.id for s in page1.subscribers] + [s.id for s in page2.subscribers]
    assert ids_seen == sorted(ids.values())[:4] and page1.total_estimate >= 1
    by_field = await stub.SearchSubscribers(
        lists_pb2.SearchSubscribersRequest(field_key="pref", field_value="東京都", email_prefix="ta"),
        metadata=as_user(signer),
    )
    assert [s.email for s in by_field.subscribers] == ["taro@example.jp"]
    on_vip = await stub.SearchSubscribers(lists_pb2.SearchSubscribersRequest(list_id=vip), metadata=as_user(signer))
    assert [s.email for s in on_vip.subscribers] == ["taro@example.jp"]


async def test_suppression_respected_by_stream_recipients(lists_service, stub, campaigns_stub, signer):
    # An address suppressed by hand is never streamed though still active; CheckSuppressed tells the
    # sender so at send time; removing it needs the admin scope and brings it back.
    news, _, _ = await seed(stub, signer)
    added = await stub.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(emails=["Hanako@example.jp", "not-an-address"]),
        metadata=as_user(signer),
    )
    assert added.added == 1 and [e.index for e in added.errors] == [1]
    streamed = [r.email for chunk in await stream(campaigns_stub, as_campaigns(signer), [news]) for r in chunk]
    assert "hanako@example.jp" not in streamed and len(streamed) == 4
    checked = await campaigns_stub.CheckSuppressed(
        lists_suppression_pb2.CheckSuppressedRequest(emails=["HANAKO@example.jp", "taro@example.jp"]),
        metadata=as_campaigns(signer),
    )
    assert [(s.email, s.reason) for s in checked.suppressed] == [("HANAKO@example.jp", "manual")]
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.RemoveSuppression(
            lists_suppression_pb2.RemoveSuppressionRequest(email="hanako@example.jp"), metadata=as_user(signer)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await stub.RemoveSuppression(
        lists_suppression_pb2.RemoveSuppressionRequest(email="hanako@example.jp"),
        metadata=as_user(signer, scopes=ADMIN),
    )
    streamed = [r.email for chunk in await stream(campaigns_stub, as_campaigns(signer), [news]) for r in chunk]
    assert "hanako@example.jp" in streamed


async def test_unsubscribe_by_token(lists_service, stub, campaigns_stub, signer, internal_key, database_url):
    # The page shows the subscriber's lists; leaving one list keeps the others; a one-click
    # unsubscribe leaves everything, is recorded with its source and suppresses the address before
    # the call returns. A forged token names nobody.
    news, vip, ids = await seed(stub, signer)
    token = unsubscribe_token(internal_key, RecipientRef(ORG, 9, ids["taro@example.jp"]))
    page = await stub.GetUnsubscribePage(
        lists_signup_pb2.GetUnsubscribePageRequest(token=token), metadata=as_gateway(signer)
    )
    assert page.email == "taro@example.jp" and [x.id for x in page.lists] == [news, vip]
    left = await stub.Unsubscribe(
        lists_signup_pb2.UnsubscribeRequest(token=token, list_ids=[vip], source="page"), metadata=as_gateway(signer)
    )
    assert list(left.left_list_ids) == [vip] and left.status == lists_pb2.SUBSCRIBER_STATUS_ACTIVE
    gone = await stub.Unsubscribe(
        lists_signup_pb2.UnsubscribeRequest(token=token, source="one-click"), metadata=as_gateway(signer)
    )
    assert list(gone.left_list_ids) == [news] and gone.status == lists_pb2.SUBSCRIBER_STATUS_UNSUBSCRIBED
    streamed = [r.email for chunk in await stream(campaigns_stub, as_campaigns(signer), [news, vip]) for r in chunk]
    assert "taro@example.jp" not in streamed
    events = await stub.ListSubscriberEvents(
        lists_pb2.ListSubscriberEventsRequest(subscriber_id=ids["taro@example.jp"]), metadata=as_user(signer)
    )
    assert [(e.new_status, e.cause) for e in events.events][-1] == ("unsubscribed", "unsubscribe")
    assert "one-click" in events.events[-1].detail
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT reason FROM lists.suppressions WHERE email = 'taro@example.jp'").fetchone() == (
            "unsubscribed",
        )
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await stub.Unsubscribe(
            lists_signup_pb2.UnsubscribeRequest(token=token[:-2] + "AA"), metadata=as_gateway(signer)
        )
    assert forged.value.code() == grpc.StatusCode.NOT_FOUND


async def test_signup_double_opt_in(lists_service, stub, campaigns_stub, signer, js):
    # A form signup creates a pending subscriber with a consent record and publishes the confirmation
    # mail on NATS (category lists.confirm, Nats-Msg-Id its message key); the link's token activates
    # the subscriber on the form's list. A filled honeypot is ignored; an IP over its hourly limit is refused.
    news = await new_list(stub, signer)
    await set_sender(stub, signer)
    form = await stub.CreateForm(
        lists_signup_pb2.FormInput(list_id=news, name="top", ask_name=True, thanks_text="ありがとう"),
        metadata=as_user(signer),
    )
    snippet = await stub.GetFormSnippet(
        lists_signup_pb2.GetFormSnippetRequest(form_id=form.id), metadata=as_user(signer)
    )
    assert f"/f/{form.id}" in snippet.html and 'name="website"' in snippet.html
    sub = await js.pull_subscribe(bus.SUBJECT_SEND_TRANSACTIONAL, durable="test-confirm", stream=bus.STREAM_SEND)
    reply = await stub.SubmitSignup(
        lists_signup_pb2.SubmitSignupRequest(
            form_id=form.id, email="new@example.jp", name="新規", source_ip="192.0.2.7", user_agent="Test/1"
        ),
        metadata=as_gateway(signer),
    )
    assert reply.accepted and reply.thanks_text == "ありがとう"
    [msg] = await sub.fetch(1, timeout=10)
    message = events_pb2.TransactionalMessage()
    message.ParseFromString(msg.data)
    assert (message.category, message.to_address, message.organization_id) == ("lists.confirm", "new@example.jp", ORG)
    assert (message.content.from_address, message.content.from_name) == ("news@example.jp", "Acme")
    assert msg.headers["Nats-Msg-Id"] == message.message_key
    assert msg.subject == bus.transactional_subject(ORG, platform=True)  # the platform's subject of its organisation
    confirm_url = json.loads(message.variables_json)["confirm_url"]
    token = confirm_url.rsplit("/c/", 1)[1]
    found = await stub.SearchSubscribers(
        lists_pb2.SearchSubscribersRequest(email_prefix="new@"), metadata=as_user(signer)
    )
    assert found.subscribers[0].status == lists_pb2.SUBSCRIBER_STATUS_PENDING
    assert await stream(campaigns_stub, as_campaigns(signer), [news]) == []

    confirmed = await stub.ConfirmSignup(
        lists_signup_pb2.ConfirmSignupRequest(token=token), metadata=as_gateway(signer)
    )
    assert confirmed.list_id == news
    streamed = [r.email for chunk in await stream(campaigns_stub, as_campaigns(signer), [news]) for r in chunk]
    assert streamed == ["new@example.jp"]
    data = await stub.ExportSubscriberData(
        lists_privacy_pb2.ExportSubscriberDataRequest(subscriber_id=found.subscribers[0].id),
        metadata=as_user(signer, scopes=ADMIN),
    )
    consent = json.loads(data.json)["consents"][0]
    assert consent["source_ip"] == "192.0.2.7" and consent["confirmed_at"]

    robot = await stub.SubmitSignup(
        lists_signup_pb2.SubmitSignupRequest(form_id=form.id, email="bot@example.jp", honeypot="http://spam"),
        metadata=as_gateway(signer),
    )
    assert robot.accepted
    assert (
        await stub.SearchSubscribers(lists_pb2.SearchSubscribersRequest(email_prefix="bot"), metadata=as_user(signer))
    ).subscribers == []
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        for i in range(20):
            await stub.SubmitSignup(
                lists_signup_pb2.SubmitSignupRequest(
                    form_id=form.id, email=f"p{i}@example.jp", source_ip="198.51.100.1"
                ),
                metadata=as_gateway(signer),
            )
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_form_needs_a_sender_address_before_it_takes_signups(lists_service, stub, signer, js, database_url):
    # Without a sender address the confirmation mail could never be sent: no form can be made, the
    # address cannot be emptied while forms exist, the unsubscribe confirmation cannot be turned on
    # without one, and an address a From header cannot carry is refused. A form left from before (its
    # sender emptied behind the service's back) refuses signups, storing and mailing nothing, instead
    # of thanking the person for a mail that never comes.
    news = await new_list(stub, signer)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateForm(lists_signup_pb2.FormInput(list_id=news, name="top"), metadata=as_user(signer))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs a sender address" in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as unsendable:
        await set_sender(stub, signer, "ニュース@example.jp")
    assert unsendable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot be the sender address" in unsendable.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as no_from:
        await stub.UpdateSettings(
            lists_signup_pb2.ListsSettings(confirm_unsubscribe=True), metadata=as_user(signer, scopes=ADMIN)
        )
    assert no_from.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # An internationalised domain is kept in the IDNA form a From header carries.
    await set_sender(stub, signer, "news@例え.jp")
    settings = await stub.GetSettings(lists_signup_pb2.GetSettingsRequest(), metadata=as_user(signer))
    assert settings.sender_address == "news@xn--r8jz45g.jp"
    form = await stub.CreateForm(lists_signup_pb2.FormInput(list_id=news, name="top"), metadata=as_user(signer))
    with pytest.raises(grpc.aio.AioRpcError) as emptied:
        await set_sender(stub, signer, "")
    assert emptied.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await stub.GetSettings(lists_signup_pb2.GetSettingsRequest(), metadata=as_user(signer))).sender_address

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE lists.organization_settings SET sender_address = ''")
    sub = await js.pull_subscribe(bus.SUBJECT_SEND_TRANSACTIONAL, durable="test-no-sender", stream=bus.STREAM_SEND)
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await stub.SubmitSignup(
            lists_signup_pb2.SubmitSignupRequest(form_id=form.id, email="new@example.jp", source_ip="192.0.2.9"),
            metadata=as_gateway(signer),
        )
    assert closed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM lists.subscribers").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM lists.consents").fetchone() == (0,)
    with pytest.raises(TimeoutError):
        await sub.fetch(1, timeout=1)


async def test_erase_leaves_only_the_hash(lists_service, stub, signer, database_url):
    # Erasing a subscriber removes the row, its history, subscriptions and any plain copy of the
    # address; only a keyed hash stays on the suppression list, so a later import of it is refused.
    news, _, ids = await seed(stub, signer)
    target = ids["hanako@example.jp"]
    await stub.EraseSubscriber(
        lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=target), metadata=as_user(signer, scopes=ADMIN)
    )
    with psycopg.connect(database_url) as conn:
        dump = conn.execute("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM lists.subscribers) t").fetchone()[
            0
        ] + " ".join(
            str(r)
            for table in ("subscriber_events", "list_subscriptions", "suppressions", "consents", "import_errors")
            for r in conn.execute(f"SELECT * FROM lists.{table}").fetchall()
        )
        assert "hanako" not in dump.lower()
        assert conn.execute(
            "SELECT count(*) FROM lists.subscriber_events WHERE subscriber_id = %s", (target,)
        ).fetchone() == (0,)
        assert conn.execute("SELECT email, reason FROM lists.suppressions").fetchall() == [(None, "erased")]
    checked = await stub.CheckSuppressed(
        lists_suppression_pb2.CheckSuppressedRequest(emails=["hanako@example.jp"]), metadata=as_user(signer)
    )
    assert checked.suppressed[0].reason == "erased"
    from tests.integration.test_lists_import import upload, wait_job

    job = await wait_job(stub, signer, await upload(stub, signer, news, b"email\nhanako@example.jp\n"))
    assert (job.rows_added, job.rows_failed) == (0, 1)


async def test_listing_the_suppression_list_without_a_filter_returns_every_entry(lists_service, stub, signer):
    # Regression: with no address part and no reason given, ListSuppressions (and the CSV export) list
    # every entry, the erased subscriber's too (it has no address, only the keyed hash); a filter still
    # narrows the list.
    _, _, ids = await seed(stub, signer)
    await stub.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(emails=["stop@example.jp", "quit@example.jp"]),
        metadata=as_user(signer),
    )
    await stub.EraseSubscriber(
        lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=ids["jiro@example.com"]),
        metadata=as_user(signer, scopes=ADMIN),
    )
    listed = await stub.ListSuppressions(lists_suppression_pb2.ListSuppressionsRequest(), metadata=as_user(signer))
    assert [(s.email, s.reason) for s in listed.suppressions] == [
        ("stop@example.jp", "manual"),
        ("quit@example.jp", "manual"),
        ("", "erased"),
    ]
    by_part = await stub.ListSuppressions(
        lists_suppression_pb2.ListSuppressionsRequest(email_contains="QUIT"), metadata=as_user(signer)
    )
    assert [s.email for s in by_part.suppressions] == ["quit@example.jp"]
    by_reason = await stub.ListSuppressions(
        lists_suppression_pb2.ListSuppressionsRequest(reason="erased"), metadata=as_user(signer)
    )
    assert [s.reason for s in by_reason.suppressions] == ["erased"]
    exported = b"".join(
        [
            c.data
            async for c in stub.ExportSuppressions(
                lists_suppression_pb2.ExportSuppressionsRequest(), metadata=as_user(signer)
            )
        ]
    ).decode("utf-8-sig")
    assert exported.splitlines()[1:] == [
        line
        for line in exported.splitlines()[1:]
        if line.split(",")[0] in ("stop@example.jp", "quit@example.jp", "(erased)")
    ]
    assert len(exported.splitlines()) == 4


async def test_signup_of_a_suppressed_address_answers_like_any_other_and_mails_nothing(lists_service, stub, signer, js):
    # Regression: a public signup for an address on the suppression list (here suppressed by hand) gets
    # exactly the answer any signup gets, so a stranger cannot probe the list, and no confirmation mail
    # goes out and no subscriber is made; a signup of a fresh address right after it is mailed as usual.
    news = await new_list(stub, signer)
    await set_sender(stub, signer)
    form = await stub.CreateForm(
        lists_signup_pb2.FormInput(list_id=news, name="top", thanks_text="ありがとう"), metadata=as_user(signer)
    )
    await stub.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(emails=["gone@example.jp"]), metadata=as_user(signer)
    )
    sub = await js.pull_subscribe(bus.SUBJECT_SEND_TRANSACTIONAL, durable="test-suppressed", stream=bus.STREAM_SEND)
    suppressed = await stub.SubmitSignup(
        lists_signup_pb2.SubmitSignupRequest(form_id=form.id, email="gone@example.jp", source_ip="192.0.2.8"),
        metadata=as_gateway(signer),
    )
    fresh = await stub.SubmitSignup(
        lists_signup_pb2.SubmitSignupRequest(form_id=form.id, email="fresh@example.jp", source_ip="192.0.2.8"),
        metadata=as_gateway(signer),
    )
    assert suppressed == fresh
    assert suppressed.accepted and suppressed.thanks_text == "ありがとう"
    # The stream keeps the order of publishing: the first mail is the fresh address's, and none follows.
    [msg] = await sub.fetch(1, timeout=10)
    await msg.ack_sync()
    message = events_pb2.TransactionalMessage()
    message.ParseFromString(msg.data)
    assert message.to_address == "fresh@example.jp"
    info = await js.consumer_info(bus.STREAM_SEND, "test-suppressed")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    found = await stub.SearchSubscribers(
        lists_pb2.SearchSubscribersRequest(email_prefix="gone"), metadata=as_user(signer)
    )
    assert list(found.subscribers) == []


async def test_other_organisation_gets_not_found(lists_service, stub, signer):
    # Every new RPC that names an object refuses another organisation's id as NOT_FOUND.
    news, _, ids = await seed(stub, signer)
    segment = await stub.CreateSegment(
        lists_segments_pb2.SegmentInput(
            name="s", conditions_json=json.dumps({"conditions": [{"field": "list", "op": "eq", "value": news}]})
        ),
        metadata=as_user(signer),
    )
    await set_sender(stub, signer)
    form = await stub.CreateForm(lists_signup_pb2.FormInput(list_id=news, name="f"), metadata=as_user(signer))
    job = await stub.CreateImport(lists_imports_pb2.CreateImportRequest(list_id=news), metadata=as_user(signer))
    fields = await stub.ListFields(lists_fields_pb2.ListFieldsRequest(), metadata=as_user(signer))
    other = as_user(signer, OTHER_ORG, ADMIN)
    subscriber = ids["taro@example.jp"]
    calls = [
        (stub.DeleteField, lists_fields_pb2.DeleteFieldRequest(field_id=fields.fields[0].id)),
        (stub.UpdateSubscriber, lists_pb2.UpdateSubscriberRequest(subscriber_id=subscriber, name="x")),
        (stub.ListSubscriberEvents, lists_pb2.ListSubscriberEventsRequest(subscriber_id=subscriber)),
        (stub.SearchSubscribers, lists_pb2.SearchSubscribersRequest(list_id=news)),
        (stub.CreateImport, lists_imports_pb2.CreateImportRequest(list_id=news)),
        (stub.UploadImportChunk, lists_imports_pb2.UploadImportChunkRequest(import_id=job.id, data=b"x")),
        (stub.StartImport, lists_imports_pb2.StartImportRequest(import_id=job.id)),
        (stub.GetImport, lists_imports_pb2.GetImportRequest(import_id=job.id)),
        (stub.ResumeImport, lists_imports_pb2.GetImportRequest(import_id=job.id)),
        (stub.RollbackImport, lists_imports_pb2.GetImportRequest(import_id=job.id)),
        (stub.GetSegment, lists_segments_pb2.GetSegmentRequest(segment_id=segment.id)),
        (
            stub.UpdateSegment,
            lists_segments_pb2.UpdateSegmentRequest(
                segment_id=segment.id,
                segment=lists_segments_pb2.SegmentInput(
                    name="x", conditions_json='{"conditions": [{"field": "email", "op": "is_empty"}]}'
                ),
            ),
        ),
        (stub.DeleteSegment, lists_segments_pb2.GetSegmentRequest(segment_id=segment.id)),
        (stub.PreviewSegment, lists_segments_pb2.PreviewSegmentRequest(segment_id=segment.id)),
        (
            stub.PreviewSegment,
            lists_segments_pb2.PreviewSegmentRequest(
                conditions_json=json.dumps({"conditions": [{"field": "list", "op": "eq", "value": news}]})
            ),
        ),
        (stub.CreateForm, lists_signup_pb2.FormInput(list_id=news)),
        (stub.GetFormSnippet, lists_signup_pb2.GetFormSnippetRequest(form_id=form.id)),
        (stub.ExportSubscriberData, lists_privacy_pb2.ExportSubscriberDataRequest(subscriber_id=subscriber)),
        (stub.EraseSubscriber, lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=subscriber)),
    ]
    for method, request in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request, metadata=other)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, method
    for method, request in [
        (stub.StreamImportErrors, lists_imports_pb2.GetImportRequest(import_id=job.id)),
        (stub.ExportSubscribers, lists_imports_pb2.ExportSubscribersRequest(segment_id=segment.id)),
        (stub.StreamRecipients, lists_pb2.StreamRecipientsRequest(segment_ids=[segment.id])),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            [c async for c in method(request, metadata=other)]
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, method
    mine = await stub.CheckSuppressed(
        lists_suppression_pb2.CheckSuppressedRequest(emails=["taro@example.jp"]), metadata=other
    )
    assert list(mine.suppressed) == []
    # Still there for their owner.
    assert (
        await stub.GetSegment(lists_segments_pb2.GetSegmentRequest(segment_id=segment.id), metadata=as_user(signer))
    ).id
