"""Announcing campaign states and sending domains on NATS: each change committed, in order, for the senders' copies."""

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


# The domain's state when relayed (newer than the change row, never older): a copy keeps the newest.
SELECT_DOMAIN_CHANGES = """
SELECT c.id, c.organization_id, c.domain_id, coalesce(d.domain, ''), d.verified_at IS NOT NULL,
       coalesce(d.return_path_host, ''),
       CASE WHEN d.verified_at IS NULL THEN '[]'::json ELSE coalesce((
           SELECT json_agg(json_build_array(k.selector, k.algorithm, k.sealed_private_key) ORDER BY k.algorithm DESC)
           FROM dkim_keys k
           WHERE k.domain_id = d.id AND k.generation = (SELECT max(generation) FROM dkim_keys WHERE domain_id = d.id)
       ), '[]'::json) END,
       c.changed_at
FROM sending_domain_changes c LEFT JOIN sending_domains d ON d.id = c.domain_id
ORDER BY c.id LIMIT %s
"""
DELETE_DOMAIN_CHANGES = "DELETE FROM sending_domain_changes WHERE id = ANY(%s)"


def sending_domain_changed(row: tuple) -> Announcement:
    """The SendingDomainChanged of one sending_domain_changes row; keys (sealed) only of a verified domain."""
    change_id, organization_id, domain_id, domain, verified, return_path_host, keys, changed_at = row
    at = Timestamp()
    at.FromDatetime(changed_at)
    event = events_pb2.SendingDomainChanged(
        organization_id=organization_id,
        domain_id=domain_id,
        domain=domain,
        verified=bool(verified),
        return_path_domain=return_path_host,
        keys=[
            events_pb2.SendingDomainKey(selector=selector, algorithm=algorithm, sealed_private_key=sealed)
            for selector, algorithm, sealed in keys
        ],
        version=change_id,
        changed_at=at,
    )
    subject = bus.sending_domain_subject(organization_id, domain_id)
    return Announcement(domain_id, subject, event, f"sending-domain-{change_id}")


SENDING_DOMAIN_CHANGES = OutboxTable(
    SELECT_DOMAIN_CHANGES, DELETE_DOMAIN_CHANGES, "mailblast_sending_domain_changes", sending_domain_changed
)


def sending_domain_relay(pool: AsyncConnectionPool, js: JetStreamContext) -> OutboxRelay:
    """The relay of sending_domain_changes to mailblast.domain.changed.<organisation>.<domain>."""
    return OutboxRelay(pool, js, SENDING_DOMAIN_CHANGES)
