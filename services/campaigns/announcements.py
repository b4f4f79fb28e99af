"""Announcing campaign states on NATS: each change committed, in order, for the senders' copies."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import events_pb2
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from services.campaigns import convert
from services.campaigns.states import CampaignState
from services.common import bus
from services.common.outbox import Announcement, OutboxRelay, OutboxTable

SELECT_CHANGES = """
SELECT id, organization_id, campaign_id, state, changed_at FROM campaign_state_changes ORDER BY id LIMIT %s
"""
DELETE_CHANGES = "DELETE FROM campaign_state_changes WHERE id = ANY(%s)"


def campaign_state_changed(row: tuple[int, int, int, str, dt.datetime]) -> Announcement:
    """The CampaignStateChanged of one campaign_state_changes row (sql/0005_campaign_state_changes.sql)."""
    change_id, organization_id, campaign_id, state, changed_at = row
    at = Timestamp()
    at.FromDatetime(changed_at)
    event = events_pb2.CampaignStateChanged(
        organization_id=organization_id,
        campaign_id=campaign_id,
        state=convert.state_to_proto(CampaignState(state)),
        version=change_id,
        changed_at=at,
    )
    subject = bus.campaign_state_subject(organization_id, campaign_id)
    return Announcement(campaign_id, subject, event, f"campaign-state-{change_id}")


CAMPAIGN_STATE_CHANGES = OutboxTable(
    SELECT_CHANGES, DELETE_CHANGES, "mailblast_campaign_state_changes", campaign_state_changed
)


def campaign_state_relay(pool: AsyncConnectionPool, js: JetStreamContext) -> OutboxRelay:
    """The relay of campaign_state_changes to mailblast.campaign.state.<organisation>.<campaign>."""
    return OutboxRelay(pool, js, CAMPAIGN_STATE_CHANGES)
