"""The bounce schema: recording bounces once each and listing them per campaign."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

INSERT_BOUNCE = """
INSERT INTO bounces (bounce_id, organization_id, campaign_id, subscriber_id, email, kind, source,
                     status, smtp_code, diagnostic, reason, occurred_at)
VALUES (%(bounce_id)s, %(organization_id)s, %(campaign_id)s, %(subscriber_id)s, %(email)s, %(kind)s,
        %(source)s, %(status)s, %(smtp_code)s, %(diagnostic)s, %(reason)s, %(occurred_at)s)
ON CONFLICT (bounce_id) DO NOTHING
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
    kind: str  # hard, soft or complaint
    source: str  # smtp or dsn
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

    async def record(self, bounces: list[BounceRow]) -> int:
        """Store bounces in one transaction, skipping ids already stored; return how many were new."""
        new = 0
        async with self._pool.connection() as conn, conn.transaction():
            for bounce in bounces:
                params = {k: getattr(bounce, k) for k in BounceRow.__dataclass_fields__ if k != "received_at"}
                params["diagnostic"] = params["diagnostic"][:2000]
                cur = await conn.execute(INSERT_BOUNCE, params)
                new += cur.rowcount
        return new

    async def list_for_campaign(self, organization_id: int, campaign_id: int) -> list[BounceRow]:
        """The organisation's bounces of one campaign, oldest first (none for another's campaign)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(LIST_BOUNCES, (organization_id, campaign_id))
            return [BounceRow(*row) for row in await cur.fetchall()]
