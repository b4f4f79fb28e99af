"""Campaigns reach audiences chosen by segments, and never a suppressed address."""

from __future__ import annotations

import json

from mailblast.v1 import campaigns_pb2, lists_fields_pb2, lists_pb2, lists_segments_pb2, lists_suppression_pb2


async def test_segment_campaign_skips_suppressed_addresses(stack, smtp_sink):
    # A campaign to the segment "plan is pro" reaches the pro subscribers of the organisation and
    # nobody else; one pro subscriber's address was put on the suppression list by hand and gets
    # nothing, even though they are active on a list.
    lists = stack.lists_stub
    await lists.CreateField(
        lists_fields_pb2.CreateFieldRequest(
            key="plan", label="Plan", type=lists_fields_pb2.FIELD_TYPE_CHOICE, options=["free", "pro"]
        ),
        metadata=stack.metadata,
    )
    created = await lists.CreateList(lists_pb2.CreateListRequest(name="customers"), metadata=stack.metadata)
    people = {"p1@example.net": "pro", "p2@example.net": "pro", "p3@example.net": "pro", "f1@example.net": "free"}
    reply = await lists.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=created.id,
            subscribers=[
                lists_pb2.SubscriberInput(email=e, name=e[:2], attributes_json=json.dumps({"plan": plan}))
                for e, plan in people.items()
            ],
        ),
        metadata=stack.metadata,
    )
    assert not reply.errors
    segment = await lists.CreateSegment(
        lists_segments_pb2.SegmentInput(
            name="pro customers",
            conditions_json=json.dumps(
                {"match": "all", "conditions": [{"field": "custom", "key": "plan", "op": "eq", "value": "pro"}]}
            ),
        ),
        metadata=stack.metadata,
    )
    await lists.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(emails=["p2@example.net"], reason="manual"),
        metadata=stack.metadata,
    )
    campaign = await stack.send_campaign([], segment_ids=[segment.id], subject="{{ name }} / {{ plan }}")
    done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT)
    assert (done.counters.total, done.counters.sent) == (2, 2)
    assert list(done.segment_ids) == [segment.id]
    assert sorted(smtp_sink.received_by()) == ["p1@example.net", "p3@example.net"]
