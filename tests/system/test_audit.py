"""Campaign sends land in the audit log whichever client started them."""

from __future__ import annotations

from mailblast.v1 import auth_pb2, auth_pb2_grpc, campaigns_pb2


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
