"""Lists' SQL: lists, subscribers, subscriptions, processed bounces and subscriber history (`lists` schema)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound
from services.common.privacy import email_hash
from services.lists import bounces
from services.lists.validation import ValidSubscriber

# Rows per statement when adding subscribers: one round trip each, parameters well under the limits.
UPSERT_CHUNK = 2000


@dataclass(frozen=True)
class MailingList:
    """A list with its head counts."""

    id: int
    name: str
    description: str
    active_count: int
    subscriber_count: int
    created_at: datetime


@dataclass(frozen=True)
class Subscriber:
    """A subscriber of an organisation."""

    id: int
    email: str
    name: str
    attributes_json: str
    status: str
    hard_bounce_count: int
    last_bounce_reason: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Recipient:
    """What a campaign needs to address one subscriber."""

    subscriber_id: int
    email: str
    name: str
    attributes_json: str


@dataclass(frozen=True)
class AddResult:
    """How many subscribers were new to the organisation, and how many existed and were updated."""

    added: int
    updated: int


class BounceOutcome(StrEnum):
    """What became of one bounce event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    UNKNOWN_SUBSCRIBER = "unknown_subscriber"


INSERT_LIST = """
INSERT INTO lists (organization_id, name, description) VALUES (%s, %s, %s)
RETURNING id, name, description, 0::bigint AS active_count, 0::bigint AS subscriber_count, created_at
"""
# Head counts come from list_counts (kept by triggers in the transactions that change membership or
# status), so the overview costs a few rows per list however many subscribers there are.
SELECT_LISTS = """
SELECT l.id, l.name, l.description, coalesce(c.active, 0)::bigint AS active_count,
       coalesce(c.total, 0)::bigint AS subscriber_count, l.created_at
FROM lists l
LEFT JOIN LATERAL (
    SELECT sum(active) AS active, sum(total) AS total FROM list_counts WHERE list_id = l.id
) c ON true
WHERE l.organization_id = %(organization_id)s AND (%(list_id)s::bigint IS NULL OR l.id = %(list_id)s)
ORDER BY l.id
"""
# Lists whose counts are spread over more rows than this get them folded into one.
FOLD_PARTS = 64
SELECT_SPREAD_LISTS = """
SELECT l.id FROM lists l JOIN list_counts c ON c.list_id = l.id
WHERE l.organization_id = %s GROUP BY l.id HAVING count(*) > %s
"""
# A concurrent fold skips the rows this one deleted, and neither sees the other's sum: no count is lost.
FOLD_COUNTS = """
WITH gone AS (DELETE FROM list_counts WHERE list_id = ANY(%s) RETURNING list_id, active, total)
INSERT INTO list_counts (list_id, active, total) SELECT list_id, sum(active), sum(total) FROM gone GROUP BY list_id
"""
SELECT_OWN_LIST_IDS = "SELECT id FROM lists WHERE organization_id = %s AND id = ANY(%s)"

# One round trip per chunk: upsert the subscribers, subscribe them, record the new ones' history.
# xmax = 0 only on a freshly inserted row, which tells "added" from "updated". Status is left alone
# on update: re-importing must not resubscribe someone who left or bounced.
UPSERT_SUBSCRIBERS = """
WITH input AS (
    SELECT * FROM unnest(%(emails)s::text[], %(names)s::text[], %(attributes)s::text[])
        AS t(email, name, attributes)
), upserted AS (
    INSERT INTO subscribers (organization_id, email, name, attributes)
    SELECT %(organization_id)s, email, name, attributes::jsonb FROM input
    ON CONFLICT (organization_id, lower(email)) DO UPDATE
        SET name = excluded.name, attributes = excluded.attributes, updated_at = now()
    RETURNING id, (xmax = 0) AS inserted
), subscribed AS (
    INSERT INTO list_subscriptions (list_id, subscriber_id)
    SELECT %(list_id)s, id FROM upserted
    ON CONFLICT DO NOTHING
), history AS (
    INSERT INTO subscriber_events (subscriber_id, old_status, new_status, cause)
    SELECT id, NULL, 'active', 'added' FROM upserted WHERE inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
"""

_SUBSCRIBER_COLUMNS = """
s.id, s.email, s.name, s.attributes::text AS attributes_json, s.status, s.hard_bounce_count,
s.last_bounce_reason, s.created_at, s.updated_at
"""
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SELECT_LIST_SUBSCRIBERS_PAGE = (
    "SELECT"
    + _SUBSCRIBER_COLUMNS  # nosec B608
    + """
FROM list_subscriptions ls JOIN subscribers s ON s.id = ls.subscriber_id
WHERE ls.list_id = %(list_id)s AND ls.subscriber_id > %(after)s AND s.organization_id = %(organization_id)s
ORDER BY ls.subscriber_id
LIMIT %(limit)s
"""
)
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SELECT_SUBSCRIBER = "SELECT" + _SUBSCRIBER_COLUMNS + "FROM subscribers s WHERE s.organization_id = %s AND s.id = %s"  # nosec B608

# Keyset pagination: each chunk is its own short query, so no connection or snapshot is held while
# a slow reader takes its time, and memory stays flat however long the list.
SELECT_RECIPIENTS_AFTER = """
SELECT s.id AS subscriber_id, s.email, s.name, s.attributes::text AS attributes_json
FROM subscribers s
WHERE s.organization_id = %(organization_id)s
  AND s.status = 'active'
  AND s.id > %(after)s
  AND EXISTS (
      SELECT 1 FROM list_subscriptions ls WHERE ls.subscriber_id = s.id AND ls.list_id = ANY(%(list_ids)s)
  )
ORDER BY s.id
LIMIT %(limit)s
"""

CLAIM_BOUNCE = "INSERT INTO processed_bounces (bounce_id) VALUES (%s) ON CONFLICT DO NOTHING RETURNING bounce_id"
LOCK_SUBSCRIBER_BY_ID = """
SELECT id, status, hard_bounce_count, last_bounce_reason, email FROM subscribers
WHERE organization_id = %s AND id = %s FOR UPDATE
"""
LOCK_SUBSCRIBER_BY_EMAIL = """
SELECT id, status, hard_bounce_count, last_bounce_reason, email FROM subscribers
WHERE organization_id = %s AND lower(email) = lower(%s) FOR UPDATE
"""
UPDATE_AFTER_BOUNCE = """
UPDATE subscribers SET status = %s, hard_bounce_count = %s, last_bounce_reason = %s, updated_at = now()
WHERE id = %s
"""
INSERT_SUPPRESSION = """
INSERT INTO suppressions (organization_id, email, email_hash, reason, source) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (organization_id, email_hash) DO NOTHING
"""
INSERT_SUBSCRIBER_EVENT = """
INSERT INTO subscriber_events (subscriber_id, old_status, new_status, cause, detail) VALUES (%s, %s, %s, %s, %s)
"""


class ListsStore:
    """Reads and writes the lists schema through a pool bound to it."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes) -> None:
        self._pool = pool
        self._key = internal_key

    async def create_list(self, organization_id: int, name: str, description: str) -> MailingList:
        """Create an empty list."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(MailingList))
            await cur.execute(INSERT_LIST, (organization_id, name, description))
            row = await cur.fetchone()
            assert row is not None
            return row

    async def lists(self, organization_id: int, list_id: int | None = None) -> list[MailingList]:
        """The organisation's lists (or the one asked for) with head counts."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(MailingList))
            await cur.execute(SELECT_LISTS, {"organization_id": organization_id, "list_id": list_id})
            rows = await cur.fetchall()
            await conn.commit()
            spread = await conn.execute(SELECT_SPREAD_LISTS, (organization_id, FOLD_PARTS))
            ids = [r[0] for r in await spread.fetchall()]
            if ids:
                await conn.execute(FOLD_COUNTS, (ids,))
            await conn.commit()
            return rows

    async def own_list(self, organization_id: int, list_id: int) -> MailingList:
        """One list of the organisation; another organisation's (or none) is NOT_FOUND."""
        found = await self.lists(organization_id, list_id)
        if not found:
            raise NotFound("no list %(list)s in your organisation", list=list_id)
        return found[0]

    async def own_list_ids(self, organization_id: int, list_ids: Sequence[int]) -> set[int]:
        """Those of the ids that are lists of the organisation."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SELECT_OWN_LIST_IDS, (organization_id, list(list_ids)))
            return {row[0] for row in await cur.fetchall()}

    async def add_subscribers(
        self, organization_id: int, list_id: int, subscribers: Sequence[ValidSubscriber]
    ) -> AddResult:
        """Insert or update the subscribers and put them on the list, in one transaction."""
        # The same order in every transaction keeps two overlapping imports from deadlocking.
        ordered = sorted(subscribers, key=lambda s: s.email.lower())
        added = updated = 0
        async with self._pool.connection() as conn, conn.transaction():
            for start in range(0, len(ordered), UPSERT_CHUNK):
                chunk = ordered[start : start + UPSERT_CHUNK]
                cur = await conn.execute(
                    UPSERT_SUBSCRIBERS,
                    {
                        "organization_id": organization_id,
                        "list_id": list_id,
                        "emails": [s.email for s in chunk],
                        "names": [s.name for s in chunk],
                        "attributes": [s.attributes_json for s in chunk],
                    },
                )
                row = await cur.fetchone()
                assert row is not None
                added += row[0]
                updated += row[1]
        return AddResult(added, updated)

    async def list_subscribers_page(
        self, organization_id: int, list_id: int, after: int, limit: int
    ) -> list[Subscriber]:
        """Up to `limit` subscribers of the list with ids above `after`, by id."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Subscriber))
            await cur.execute(
                SELECT_LIST_SUBSCRIBERS_PAGE,
                {"organization_id": organization_id, "list_id": list_id, "after": after, "limit": limit},
            )
            return await cur.fetchall()

    async def subscriber(self, organization_id: int, subscriber_id: int) -> Subscriber | None:
        """One subscriber of the organisation, or None."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Subscriber))
            await cur.execute(SELECT_SUBSCRIBER, (organization_id, subscriber_id))
            return await cur.fetchone()

    async def recipients_after(
        self, organization_id: int, list_ids: Sequence[int], after: int, limit: int
    ) -> list[Recipient]:
        """The next `limit` active subscribers on any of the lists with ids above `after`, each once."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Recipient))
            await cur.execute(
                SELECT_RECIPIENTS_AFTER,
                {
                    "organization_id": organization_id,
                    "list_ids": list(list_ids),
                    "after": after,
                    "limit": limit,
                },
            )
            return await cur.fetchall()

    async def apply_bounce(self, bounce: bounces.Bounce, threshold: int) -> BounceOutcome:
        """Apply a bounce once (its id is recorded in the same transaction) and commit."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(CLAIM_BOUNCE, (bounce.bounce_id,))
            if await cur.fetchone() is None:
                return BounceOutcome.DUPLICATE
            if bounce.subscriber_id:
                cur = await conn.execute(LOCK_SUBSCRIBER_BY_ID, (bounce.organization_id, bounce.subscriber_id))
            else:
                cur = await conn.execute(LOCK_SUBSCRIBER_BY_EMAIL, (bounce.organization_id, bounce.email))
            row = await cur.fetchone()
            if row is None:
                return BounceOutcome.UNKNOWN_SUBSCRIBER
            subscriber_id, status, count, last_reason, email = row
            change = bounces.apply(bounce, status, count, last_reason, threshold)
            await conn.execute(
                UPDATE_AFTER_BOUNCE,
                (change.status, change.hard_bounce_count, change.last_bounce_reason, subscriber_id),
            )
            if change.cause is not None:
                await conn.execute(
                    INSERT_SUBSCRIBER_EVENT, (subscriber_id, status, change.status, change.cause, bounce.reason)
                )
                # An error stop or a complaint keeps the address from every later send, whatever list.
                await conn.execute(
                    INSERT_SUPPRESSION,
                    (bounce.organization_id, email.lower(), email_hash(self._key, email), change.cause,
                     f"bounce {bounce.bounce_id}"),
                )  # fmt: skip
            return BounceOutcome.APPLIED
