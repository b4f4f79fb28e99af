"""Lists' SQL for personal data: everything held about one subscriber, and its erasure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound
from services.common.privacy import email_hash
from services.lists.store_suppression import like_pattern

SELECT_SUBSCRIBER_DATA = """
SELECT id, email, name, attributes, status, hard_bounce_count, last_bounce_reason, created_at, updated_at FROM
subscribers WHERE organization_id = %s AND id = %s
"""
SELECT_LISTS_DATA = """
SELECT l.id, l.name, ls.created_at AS subscribed_at FROM list_subscriptions ls JOIN lists l ON l.id =
ls.list_id WHERE ls.subscriber_id = %s ORDER BY l.id
"""
SELECT_HISTORY_DATA = """
SELECT old_status, new_status, cause, detail, occurred_at FROM subscriber_history WHERE subscriber_id = %s
ORDER BY seq
"""
SELECT_CONSENTS_DATA = """
SELECT form_id, source_ip, user_agent, submitted_at, confirmed_at FROM consents WHERE subscriber_id = %s ORDER
BY id
"""
SELECT_SUPPRESSION_DATA = """
SELECT email, reason, source, created_at FROM suppressions WHERE organization_id = %s AND email_hash = %s
"""
LOCK_SUBSCRIBER = """
SELECT email FROM subscribers WHERE organization_id = %s AND id = %s FOR UPDATE
"""
DELETE_SUBSCRIBER = """
DELETE FROM subscribers WHERE id = %s
"""
DELETE_QUOTING_IMPORT_ERRORS = """
DELETE FROM import_errors WHERE job_id IN (SELECT id FROM import_jobs WHERE organization_id = %s) AND
(lower(raw) LIKE %s OR lower(reason) LIKE %s OR lower(coalesce(explanation::text, '')) LIKE %s)
"""
DELETE_SUPPRESSION = """
DELETE FROM suppressions WHERE organization_id = %s AND email_hash = %s
"""
KEEP_ERASED_HASH = """
INSERT INTO suppressions (organization_id, email, email_hash, reason, source) VALUES (%s, NULL, %s, 'erased',
'erasure request')
"""
INSERT_ERASURE = """
INSERT INTO erasures (organization_id, subscriber_id, email_hash) VALUES (%s, %s, %s)
"""


@dataclass(frozen=True)
class PersonalData:
    """Everything held about one subscriber, each part as the rows its table holds."""

    subscriber: dict[str, Any]
    lists: list[dict[str, Any]]
    events: list[dict[str, Any]]
    consents: list[dict[str, Any]]
    suppression: list[dict[str, Any]]


class PrivacyStore:
    """Reads and erases one subscriber across the lists schema."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes) -> None:
        self.pool = pool
        self.key = internal_key

    async def personal_data(self, org: int, subscriber_id: int) -> PersonalData:
        """Everything held about one subscriber."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                SELECT_SUBSCRIBER_DATA,
                (org, subscriber_id),
            )
            subscriber = await cur.fetchone()
            if subscriber is None:
                raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=subscriber_id)
            await cur.execute(
                SELECT_LISTS_DATA,
                (subscriber_id,),
            )
            lists = await cur.fetchall()
            await cur.execute(
                SELECT_HISTORY_DATA,
                (subscriber_id,),
            )
            events = await cur.fetchall()
            await cur.execute(
                SELECT_CONSENTS_DATA,
                (subscriber_id,),
            )
            consents = await cur.fetchall()
            await cur.execute(
                SELECT_SUPPRESSION_DATA,
                (org, email_hash(self.key, subscriber["email"])),
            )
            suppression = await cur.fetchall()
        return PersonalData(subscriber, lists, events, consents, suppression)

    async def erase(self, org: int, subscriber_id: int) -> str:
        """Delete every trace of the subscriber; keep only the keyed hash of the address as a suppression.

        The erasure is queued for the other services in the same transaction; returns the keyed hash.
        """
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(LOCK_SUBSCRIBER, (org, subscriber_id))
            row = await cur.fetchone()
            if row is None:
                raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=subscriber_id)
            hashed = email_hash(self.key, row[0])
            for table in ("subscriber_events", "list_subscriptions", "consents", "import_changes"):
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE subscriber_id = %s").format(sql.Identifier(table)), (subscriber_id,)
                )
            await conn.execute(DELETE_SUBSCRIBER, (subscriber_id,))
            # Rejected import rows quote the address; uploaded files are dropped once their job is done.
            pattern = like_pattern(row[0])
            await conn.execute(
                DELETE_QUOTING_IMPORT_ERRORS,
                (org, pattern, pattern, pattern),
            )
            await conn.execute(DELETE_SUPPRESSION, (org, hashed))
            await conn.execute(
                KEEP_ERASED_HASH,
                (org, hashed),
            )
            await conn.execute(
                INSERT_ERASURE,
                (org, subscriber_id, hashed),
            )
        return hashed
