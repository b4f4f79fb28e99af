"""Lists' SQL for the organisations' suppression lists (each change reaches the senders through 0009's outbox)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.privacy import email_hash
from services.lists.suppression import SuppressionReason

INSERT_SUPPRESSION = """
INSERT INTO suppressions (organization_id, email, email_hash, reason, source) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (organization_id, email_hash) DO NOTHING RETURNING id
"""
# No address part matches every entry, an erased one (no address, only the hash) too.
SELECT_PAGE = """
SELECT id, email, reason, source, created_at FROM suppressions
WHERE organization_id = %(org)s AND id > %(after)s
  AND (%(contains)s = '' OR email LIKE %(pattern)s) AND (%(reason)s = '' OR reason = %(reason)s)
ORDER BY id LIMIT %(limit)s
"""
# An erased subscriber's hash stays: it is what keeps the address from coming back.
DELETE_SUPPRESSION = """
DELETE FROM suppressions WHERE organization_id = %s AND email_hash = %s AND reason <> 'erased' RETURNING id
"""
SELECT_SUPPRESSED = """
SELECT email_hash, reason, source, created_at FROM suppressions WHERE organization_id = %s AND email_hash = ANY(%s)
"""


@dataclass(frozen=True)
class SuppressionRow:
    """One suppressed address (None for an erased subscriber's entry)."""

    id: int
    email: str | None
    reason: str
    source: str
    created_at: datetime


@dataclass(frozen=True)
class SuppressionHit:
    """Why and since when an address asked about is suppressed."""

    reason: SuppressionReason
    source: str
    created_at: datetime


def like_pattern(part: str) -> str:
    """A LIKE pattern matching `part` anywhere, lower-cased, its wildcards escaped."""
    return "%" + part.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def suppress(
    conn: AsyncConnection, key: bytes, organization_id: int, email: str, reason: str, source: str
) -> bool:
    """Put an address on the organisation's suppression list (kept as is when already there)."""
    cur = await conn.execute(
        INSERT_SUPPRESSION, (organization_id, email.strip().lower(), email_hash(key, email), reason, source[:200])
    )
    return await cur.fetchone() is not None


class SuppressionStore:
    """The suppressions table."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes) -> None:
        self.pool = pool
        self.key = internal_key

    async def add(self, org: int, emails: Sequence[str], reason: str, source: str) -> int:
        """Suppress addresses; return how many were new."""
        added = 0
        async with self.pool.connection() as conn, conn.transaction():
            for email in emails:
                added += await suppress(conn, self.key, org, email, reason, source)
        return added

    async def page(self, org: int, contains: str, reason: str, after: int, limit: int) -> list[SuppressionRow]:
        """A page of suppressions by id, filtered by address part and reason (empty: no filter)."""
        params = {"org": org, "after": after, "contains": contains, "pattern": like_pattern(contains),
                  "reason": reason, "limit": limit}  # fmt: skip
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SuppressionRow))
            await cur.execute(SELECT_PAGE, params)
            return await cur.fetchall()

    async def remove(self, org: int, email: str) -> int:
        """Take an address off the list (an erased subscriber's hash stays)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(DELETE_SUPPRESSION, (org, email_hash(self.key, email)))
            return len(await cur.fetchall())

    async def check(self, org: int, emails: Sequence[str]) -> dict[str, SuppressionHit]:
        """Which of the addresses are suppressed, by keyed hash."""
        hashes = [email_hash(self.key, e) for e in emails]
        async with self.pool.connection() as conn:
            cur = await conn.execute(SELECT_SUPPRESSED, (org, hashes))
            return {r[0]: SuppressionHit(SuppressionReason(r[1]), r[2], r[3]) for r in await cur.fetchall()}

    async def hit(self, org: int, email: str) -> SuppressionHit | None:
        """Why one address is suppressed, or None."""
        return (await self.check(org, [email])).get(email_hash(self.key, email))
