"""Announcing the suppression lists on NATS: each change committed, in order, for the senders' copies."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import events_pb2
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from services.common import bus
from services.common.outbox import Announcement, OutboxRelay, OutboxTable
from services.lists import convert

SELECT_CHANGES = """
SELECT id, organization_id, email_hash, reason, changed_at FROM suppression_changes ORDER BY id LIMIT %s
"""
DELETE_CHANGES = "DELETE FROM suppression_changes WHERE id = ANY(%s)"


def suppression_changed(row: tuple[int, int, str, str | None, dt.datetime]) -> Announcement:
    """The SuppressionChanged of one suppression_changes row (sql/0009_suppression_changes.sql)."""
    change_id, organization_id, email_hash, reason, changed_at = row
    at = Timestamp()
    at.FromDatetime(changed_at)
    event = events_pb2.SuppressionChanged(
        organization_id=organization_id,
        email_hash=email_hash,
        suppressed=reason is not None,
        reason=convert.reason_pb(reason),
        version=change_id,
        changed_at=at,
    )
    subject = bus.suppression_subject(organization_id, email_hash)
    return Announcement((organization_id, email_hash), subject, event, f"suppression-{change_id}")


SUPPRESSION_CHANGES = OutboxTable(SELECT_CHANGES, DELETE_CHANGES, "mailblast_suppression_changes", suppression_changed)


def suppression_relay(pool: AsyncConnectionPool, js: JetStreamContext) -> OutboxRelay:
    """The relay of suppression_changes to mailblast.suppression.changed.<organisation>.<keyed hash>."""
    return OutboxRelay(pool, js, SUPPRESSION_CHANGES)
