"""Campaign sends and the audience's exports, imports, settings and erasures land in the audit log."""

from __future__ import annotations

import json

from mailblast.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    campaigns_pb2,
    lists_fields_pb2,
    lists_imports_pb2,
    lists_pb2,
    lists_privacy_pb2,
    lists_segments_pb2,
    lists_signup_pb2,
    lists_suppression_pb2,
)

from services.common.privacy import email_hash
from tests.support.poll import poll


async def test_send_through_the_api_is_audited_with_user_and_address(stack):
    # A send started with an API token (as the CLI does) is recorded by the campaigns service in auth's
    # audit log: the action, the campaign, the acting user and the caller's address; an address claimed
    # in metadata is believed only from the console (a service), never from a token holder.
    list_id = await stack.create_list(["a1@example.net"])
    campaign = await stack.send_campaign([list_id])
    auth = auth_pb2_grpc.AuthServiceStub(stack.channel(stack.auth.grpc_port))
    events = await auth.ListAuditEvents(
        auth_pb2.ListAuditEventsRequest(action="campaign.sent"), metadata=stack.metadata
    )
    [event] = events.events
    assert event.target == f"campaign:{campaign.id}"
    assert event.user_id > 0 and event.organization_id == stack.organization_id
    campaigns = stack.campaigns_stub

    second = await campaigns.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(
            name="again", list_ids=[list_id], from_address="news@news.example.com", subject="s", text_body="t"
        ),
        metadata=stack.metadata,
    )
    await campaigns.SendCampaign(
        campaigns_pb2.SendCampaignRequest(campaign_id=second.id),
        metadata=[*stack.metadata, ("x-mailblast-source-ip", "203.0.113.9")],
    )
    events = await auth.ListAuditEvents(
        auth_pb2.ListAuditEventsRequest(action="campaign.sent"), metadata=stack.metadata
    )
    latest = events.events[0]
    assert (latest.target, latest.source_ip) == (f"campaign:{second.id}", "127.0.0.1")


async def test_audience_actions_are_audited_with_token_address_and_no_personal_data(stack):
    # Each export, import step, setting change and erasure done over the API appears in the audit log right
    # after it: the action and its object, the acting user and the API token, the caller's address, the
    # relaying service; no audit line names a subscriber's address or name.
    lists = stack.lists_stub
    md = stack.metadata
    auth = auth_pb2_grpc.AuthServiceStub(stack.channel(stack.auth.grpc_port))
    list_id = await stack.create_list(["hanako@example.jp", "taro@example.jp"])

    async def latest(action: str) -> auth_pb2.AuditEvent:
        async def found():
            events = await auth.ListAuditEvents(auth_pb2.ListAuditEventsRequest(action=action), metadata=md)
            return events.events[0] if events.events else None

        event = await poll(found)
        assert event.user_id > 0 and event.api_token_id > 0, event
        assert (event.source_ip, event.service, event.organization_id) == ("127.0.0.1", "lists", stack.organization_id)
        assert "hanako" not in event.detail_json and "名前" not in event.detail_json and "hanako" not in event.target
        return event

    field = await lists.CreateField(
        lists_fields_pb2.CreateFieldRequest(key="plan", label="プラン", type=lists_fields_pb2.FIELD_TYPE_TEXT),
        metadata=md,
    )
    assert (await latest("field.created")).target == f"field:{field.id}"
    settings = lists_signup_pb2.ListsSettings(
        confirm_unsubscribe=True, sender_name="ニュース", sender_address="news@example.jp"
    )
    await lists.UpdateSettings(settings, metadata=md)
    assert json.loads((await latest("lists.settings_changed")).detail_json)["confirm_unsubscribe"] is True
    form = await lists.CreateForm(lists_signup_pb2.FormInput(list_id=list_id, name="top"), metadata=md)
    assert (await latest("form.created")).target == f"form:{form.id}"
    conditions = json.dumps({"match": "all", "conditions": [{"field": "list", "op": "eq", "value": list_id}]})
    segment = await lists.CreateSegment(
        lists_segments_pb2.SegmentInput(name="all", conditions_json=conditions), metadata=md
    )
    assert (await latest("segment.created")).target == f"segment:{segment.id}"
    await lists.UpdateSegment(
        lists_segments_pb2.UpdateSegmentRequest(
            segment_id=segment.id, segment=lists_segments_pb2.SegmentInput(name="all 2", conditions_json=conditions)
        ),
        metadata=md,
    )
    assert (await latest("segment.updated")).target == f"segment:{segment.id}"
    async for _ in lists.ExportSubscribers(
        lists_imports_pb2.ExportSubscribersRequest(segment_id=segment.id), metadata=md
    ):
        pass
    assert (await latest("list.exported")).target == f"segment:{segment.id}"
    await lists.DeleteSegment(lists_segments_pb2.GetSegmentRequest(segment_id=segment.id), metadata=md)
    assert (await latest("segment.deleted")).target == f"segment:{segment.id}"
    await lists.DeleteField(lists_fields_pb2.DeleteFieldRequest(field_id=field.id), metadata=md)
    assert json.loads((await latest("field.deleted")).detail_json)["key"] == "plan"

    async for _ in lists.ExportSubscribers(lists_imports_pb2.ExportSubscribersRequest(list_id=list_id), metadata=md):
        pass
    assert (await latest("list.exported")).target == f"list:{list_id}"
    await lists.AddSuppressions(lists_suppression_pb2.AddSuppressionsRequest(emails=["hanako@example.jp"]), metadata=md)
    assert json.loads((await latest("suppression.added")).detail_json)["added"] == 1
    async for _ in lists.ExportSuppressions(lists_suppression_pb2.ExportSuppressionsRequest(), metadata=md):
        pass
    assert (await latest("suppression.exported")).target == f"organization:{stack.organization_id}"
    await lists.RemoveSuppression(
        lists_suppression_pb2.RemoveSuppressionRequest(email="hanako@example.jp"), metadata=md
    )
    hashed = email_hash(stack.sender_config.internal_key, "hanako@example.jp")
    assert (await latest("suppression.removed")).target == f"suppression:{hashed}"

    data = b"email,name\njiro@example.jp,Jiro\nnot an address,X\n"
    job = await lists.CreateImport(
        lists_imports_pb2.CreateImportRequest(list_id=list_id, total_bytes=len(data), file_name="a.csv"), metadata=md
    )
    await lists.UploadImportChunk(lists_imports_pb2.UploadImportChunkRequest(import_id=job.id, data=data), metadata=md)
    await lists.StartImport(lists_imports_pb2.StartImportRequest(import_id=job.id), metadata=md)
    assert (await latest("import.started")).target == f"import:{job.id}"
    finished = json.loads((await latest("import.finished")).detail_json)
    assert (finished["state"], finished["rows_added"], finished["rows_failed"]) == ("done", 1, 1)
    async for _ in lists.StreamImportErrors(lists_imports_pb2.GetImportRequest(import_id=job.id), metadata=md):
        pass
    assert (await latest("import.errors_exported")).target == f"import:{job.id}"
    await lists.RollbackImport(lists_imports_pb2.GetImportRequest(import_id=job.id), metadata=md)
    assert (await latest("import.rolled_back")).target == f"import:{job.id}"

    found = await lists.SearchSubscribers(lists_pb2.SearchSubscribersRequest(email_prefix="hanako"), metadata=md)
    subscriber = found.subscribers[0].id
    await lists.ExportSubscriberData(
        lists_privacy_pb2.ExportSubscriberDataRequest(subscriber_id=subscriber), metadata=md
    )
    assert (await latest("subscriber.data_exported")).target == f"subscriber:{subscriber}"
    await lists.EraseSubscriber(lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=subscriber), metadata=md)
    erased = await latest("subscriber.erased")
    assert (erased.target, json.loads(erased.detail_json)) == (f"subscriber:{subscriber}", {"email_hash": hashed})
