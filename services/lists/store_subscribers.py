"""Lists' SQL for finding and changing subscribers across lists: search, status changes, history, recipients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound
from services.lists.segments import Compiled
from services.lists.store import Recipient, Subscriber
from services.lists.store_suppression import suppress
from services.lists.subscribers import SUPPRESSING, SubscriberStatus

SUBSCRIBER_COLUMNS = sql.SQL(
    "s.id, s.email, s.name, s.attributes::text AS attributes_json, s.status, s.hard_bounce_count,"
    " s.last_bounce_reason, s.created_at, s.updated_at"
)
EXPORT_PAGE = 2000
INSERT_EVENT = """
INSERT INTO subscriber_events (subscriber_id, old_status, new_status, cause, detail) VALUES (%s, %s, %s, %s, %s)
"""
SEARCH = "SELECT {} FROM subscribers s WHERE s.organization_id = %s AND s.id > %s AND {} ORDER BY s.id LIMIT %s"
ESTIMATE = "EXPLAIN (FORMAT JSON) SELECT 1 FROM subscribers s WHERE s.organization_id = %s AND {}"
COUNT = "SELECT count(*) FROM subscribers s WHERE s.organization_id = %s AND {}"
LOCK_SUBSCRIBER = "SELECT status, email FROM subscribers WHERE organization_id = %s AND id = %s FOR UPDATE"
SET_NAME = "UPDATE subscribers SET name = %s, updated_at = now() WHERE id = %s"
MERGE_ATTRIBUTES = """
UPDATE subscribers SET attributes = (attributes - %s::text[]) || %s::jsonb, updated_at = now() WHERE id = %s
"""
SET_STATUS = "UPDATE subscribers SET status = %s, updated_at = now() WHERE id = %s"
SELECT_ONE = "SELECT {} FROM subscribers s WHERE s.id = %s"
SELECT_HISTORY = """
SELECT e.old_status, e.new_status, e.cause, e.detail, e.occurred_at FROM subscriber_history e
JOIN subscribers s ON s.id = e.subscriber_id WHERE s.organization_id = %s AND s.id = %s ORDER BY e.seq
"""
ON_LISTS = "EXISTS (SELECT 1 FROM list_subscriptions ls WHERE ls.subscriber_id = s.id AND ls.list_id = ANY(%s))"
# Suppressed addresses are never recipients, whatever their status says.
RECIPIENTS = """
SELECT s.id AS subscriber_id, s.email, s.name, s.attributes::text AS attributes_json
FROM subscribers s WHERE s.organization_id = %s AND s.status = 'active' AND s.id > %s AND ({})
  AND NOT EXISTS (SELECT 1 FROM suppressions p WHERE p.organization_id = s.organization_id AND p.email = lower(s.email))
ORDER BY s.id LIMIT %s
"""
ON_LIST = "EXISTS (SELECT 1 FROM list_subscriptions ls WHERE ls.subscriber_id = s.id AND ls.list_id = %s)"
EXPORT = """
SELECT s.id, s.email, s.name, s.status, s.attributes FROM subscribers s
WHERE s.organization_id = %s AND s.id > %s AND {} ORDER BY s.id LIMIT %s
"""


@dataclass(frozen=True)
class EventRow:
    """One status change."""

    old_status: str | None
    new_status: str
    cause: str
    detail: str
    occurred_at: datetime


@dataclass(frozen=True)
class ExportRow:
    """One subscriber as a CSV export writes it."""

    id: int
    email: str
    name: str
    status: str
    attributes: dict[str, Any]


async def record_status(
    conn: AsyncConnection, subscriber_id: int, old: str | None, new: str, cause: str, detail: str = ""
) -> None:
    """Write one status change to the subscriber's history (every path that changes status calls this)."""
    await conn.execute(INSERT_EVENT, (subscriber_id, old, new, cause, detail[:1000]))


class SubscriberStore:
    """Queries over an organisation's subscribers, whatever list they are on."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes) -> None:
        self.pool = pool
        self.key = internal_key

    async def search(
        self, org: int, where: Compiled, after: int, limit: int, estimate: bool
    ) -> tuple[list[Subscriber], int]:
        """A page of matching subscribers by id, and the planner's estimate of all matches."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Subscriber))
            await cur.execute(
                sql.SQL(SEARCH).format(SUBSCRIBER_COLUMNS, where.where), [org, after, *where.params, limit]
            )
            page = await cur.fetchall()
            total = 0
            if estimate:
                planned = await conn.execute(sql.SQL(ESTIMATE).format(where.where), [org, *where.params])
                total = int((await planned.fetchone())[0][0]["Plan"]["Plan Rows"])
        return page, total

    async def count(self, org: int, where: Compiled) -> int:
        """Exact number of matches (a segment preview)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql.SQL(COUNT).format(where.where), [org, *where.params])
            return (await cur.fetchone())[0]

    async def update(
        self, org: int, subscriber_id: int, name: str | None, attributes_json: str | None,
        status: SubscriberStatus | None, reason: str,
    ) -> Subscriber:  # fmt: skip
        """Change name, merge attributes, change status (recorded with its cause)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(LOCK_SUBSCRIBER, (org, subscriber_id))
            row = await cur.fetchone()
            if row is None:
                raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=subscriber_id)
            old, email = row
            if name is not None:
                await conn.execute(SET_NAME, (name, subscriber_id))
            if attributes_json is not None:
                data = json.loads(attributes_json)
                removed = [k for k, v in data.items() if v is None]
                kept = {k: v for k, v in data.items() if v is not None}
                await conn.execute(MERGE_ATTRIBUTES, (removed, json.dumps(kept, ensure_ascii=False), subscriber_id))
            if status and status != old:
                await conn.execute(SET_STATUS, (status, subscriber_id))
                await record_status(conn, subscriber_id, old, status, "manual", reason)
                if status in SUPPRESSING:
                    await suppress(conn, self.key, org, email, "manual", f"status set to {status}")
            cur = conn.cursor(row_factory=class_row(Subscriber))
            await cur.execute(sql.SQL(SELECT_ONE).format(SUBSCRIBER_COLUMNS), (subscriber_id,))
            return await cur.fetchone()

    async def events(self, org: int, subscriber_id: int) -> list[EventRow]:
        """The subscriber's status history, oldest first."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(EventRow))
            await cur.execute(SELECT_HISTORY, (org, subscriber_id))
            return await cur.fetchall()

    async def recipients_after(
        self, org: int, list_ids: Sequence[int], segments: Sequence[Compiled], after: int, limit: int
    ) -> list[Recipient]:
        """Active, unsuppressed subscribers on any of the lists or in any of the segments, by id."""
        targets: list[sql.Composable] = []
        params: list[Any] = [org, after]
        if list_ids:
            targets.append(sql.SQL(ON_LISTS))
            params.append(list(list_ids))
        for segment in segments:
            targets.append(segment.where)
            params.extend(segment.params)
        params.append(limit)
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Recipient))
            await cur.execute(sql.SQL(RECIPIENTS).format(sql.SQL(" OR ").join(targets)), params)
            return await cur.fetchall()

    async def export_rows(self, org: int, list_id: int, segment: Compiled | None) -> AsyncIterator[list[ExportRow]]:
        """Pages of a list's or a segment's subscribers, by id, each its own short query."""
        after = 0
        while True:
            params: list[Any] = [org, after]
            if segment is not None:
                where = segment.where
                params.extend(segment.params)
            else:
                where = sql.SQL(ON_LIST)
                params.append(list_id)
            params.append(EXPORT_PAGE)
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=class_row(ExportRow))
                await cur.execute(sql.SQL(EXPORT).format(where), params)
                rows = await cur.fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1].id
            if len(rows) < EXPORT_PAGE:
                return
