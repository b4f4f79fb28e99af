"""The bounce schema: recording bounces once each and listing them per campaign."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from services.bounce.kinds import BounceKind, BounceSource
from services.common.erasure import Erasure, exclude_writers, hold_off_erasures

SERVICE = "bounce"

INSERT_BOUNCE = """
INSERT INTO bounces (bounce_id, organization_id, campaign_id, subscriber_id, email, kind, source,
                     status, smtp_code, diagnostic, reason, occurred_at)
VALUES (%(bounce_id)s, %(organization_id)s, %(campaign_id)s, %(subscriber_id)s, %(email)s, %(kind)s,
        %(source)s, %(status)s, %(smtp_code)s, %(diagnostic)s, %(reason)s, %(occurred_at)s)
ON CONFLICT (bounce_id) DO NOTHING
"""

SELECT_ERASED = """
SELECT e.organization_id, e.subscriber_id, e.email_hash
FROM erased_subscribers e JOIN unnest(%s::bigint[], %s::bigint[]) AS w(organization_id, subscriber_id)
  ON e.organization_id = w.organization_id AND e.subscriber_id = w.subscriber_id
"""

INSERT_ERASED = """
INSERT INTO erased_subscribers (organization_id, subscriber_id, email_hash, erased_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (organization_id, subscriber_id) DO NOTHING
"""

# The diagnostic is the receiving server's free text, which quotes the address more often than not.
ERASE_BOUNCES = """
UPDATE bounces SET email = %(hash)s, diagnostic = ''
WHERE organization_id = %(organization)s AND subscriber_id = %(subscriber)s
  AND (email <> %(hash)s OR diagnostic <> '')
"""

LIST_BOUNCES = """
SELECT bounce_id, organization_id, campaign_id, subscriber_id, email, kind, source, status, smtp_code,
       diagnostic, reason, occurred_at, received_at
FROM bounces
WHERE organization_id = %s AND campaign_id = %s
ORDER BY received_at, bounce_id
"""


@dataclass(frozen=True)
class BounceRow:
    """One recorded bounce of one subscriber of one campaign."""

    bounce_id: str
    organization_id: int
    campaign_id: int
    subscriber_id: int
    email: str
    kind: BounceKind
    source: BounceSource
    status: str
    smtp_code: int
    diagnostic: str
    reason: str
    occurred_at: datetime
    received_at: datetime | None = None


class BounceStore:
    """Bounces in the service's own schema."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record(self, bounces: list[BounceRow]) -> list[BounceRow]:
        """Store bounces in one transaction, skipping ids already stored; return them as stored.

        An erased subscriber's bounce is stored, and returned for its event, with the keyed hash in place of
        the address and no diagnostic text.
        """
        async with self._pool.connection() as conn, conn.transaction():
            await hold_off_erasures(conn, SERVICE, {b.organization_id for b in bounces})
            cur = await conn.execute(
                SELECT_ERASED, ([b.organization_id for b in bounces], [b.subscriber_id for b in bounces])
            )
            erased = {(org, subscriber): hashed for org, subscriber, hashed in await cur.fetchall()}
            bounces = [
                replace(b, email=erased[key], diagnostic="") if (key := (b.organization_id, b.subscriber_id)) in erased
                else b
                for b in bounces
            ]  # fmt: skip
            for bounce in bounces:
                params = {k: getattr(bounce, k) for k in BounceRow.__dataclass_fields__ if k != "received_at"}
                params["diagnostic"] = params["diagnostic"][:2000]
                await conn.execute(INSERT_BOUNCE, params)
        return bounces

    async def erase(self, erasure: Erasure) -> None:
        """Keep only the keyed hash of an erased subscriber's address in its bounces (idempotent)."""
        async with self._pool.connection() as conn, conn.transaction():
            await exclude_writers(conn, SERVICE, erasure.organization_id)
            await conn.execute(
                INSERT_ERASED,
                (erasure.organization_id, erasure.subscriber_id, erasure.email_hash, erasure.erased_at),
            )
            await conn.execute(
                ERASE_BOUNCES,
                {"hash": erasure.email_hash, "organization": erasure.organization_id,
                 "subscriber": erasure.subscriber_id},
            )  # fmt: skip

    async def list_for_campaign(self, organization_id: int, campaign_id: int) -> list[BounceRow]:
        """The organisation's bounces of one campaign, oldest first (none for another's campaign)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(LIST_BOUNCES, (organization_id, campaign_id))
            rows = [BounceRow(*row) for row in await cur.fetchall()]
        return [replace(r, kind=BounceKind(r.kind), source=BounceSource(r.source)) for r in rows]
