"""The delivery ledger (schema sender): the last outcome of each campaign recipient and transactional message."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from services.sender.smtp import SUPPRESSED, DeliveryResult

SCHEMA = "sender"

SQL_STATES = """
SELECT subscriber_id, status, attempts, email, message_id, smtp_code, smtp_message, enhanced_status, tls, updated_at,
       first_attempt_at
FROM deliveries WHERE campaign_id = %s AND subscriber_id = ANY(%s)
"""

# A final row (sent, rejected, expired) is never overwritten: a late duplicate cannot undo it.
SQL_RECORD = """
INSERT INTO deliveries AS d (
    campaign_id, subscriber_id, organization_id, email, status, message_id, smtp_code, smtp_message,
    enhanced_status, tls, attempts, first_attempt_at, updated_at
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (campaign_id, subscriber_id) DO UPDATE SET
    status = EXCLUDED.status,
    message_id = CASE WHEN EXCLUDED.message_id = '' THEN d.message_id ELSE EXCLUDED.message_id END,
    smtp_code = EXCLUDED.smtp_code,
    smtp_message = EXCLUDED.smtp_message,
    enhanced_status = EXCLUDED.enhanced_status,
    tls = EXCLUDED.tls,
    attempts = d.attempts + EXCLUDED.attempts,
    updated_at = EXCLUDED.updated_at,
    claim_owner = NULL,
    claim_expires = NULL
WHERE d.status IN ('deferred', 'claimed')
"""

# Claim recipients for one sender until the lease ends: new ones, deferred ones, and claims that lapsed
# or are already ours. Returns the subscriber ids claimed; the others are final or another sender's.
SQL_CLAIM = """
INSERT INTO deliveries AS d (campaign_id, subscriber_id, organization_id, email, status, claim_owner, claim_expires)
SELECT %(campaign)s, c.subscriber_id, %(organization)s, c.email, 'claimed', %(owner)s,
       now() + make_interval(secs => %(lease)s)
FROM unnest(%(ids)s::bigint[], %(emails)s::text[]) AS c(subscriber_id, email)
ON CONFLICT (campaign_id, subscriber_id) DO UPDATE SET
    claim_owner = EXCLUDED.claim_owner,
    claim_expires = EXCLUDED.claim_expires
WHERE d.status IN ('deferred', 'claimed')
  AND (d.claim_expires IS NULL OR d.claim_expires < now() OR d.claim_owner = EXCLUDED.claim_owner)
RETURNING d.subscriber_id
"""

SQL_RECORD_TRANSACTIONAL = """
INSERT INTO transactional_deliveries AS d (
    organization_id, message_key, category, email, status, message_id, smtp_code, smtp_message,
    enhanced_status, tls, attempts, first_attempt_at, updated_at
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (organization_id, message_key) DO UPDATE SET
    status = EXCLUDED.status,
    message_id = CASE WHEN EXCLUDED.message_id = '' THEN d.message_id ELSE EXCLUDED.message_id END,
    smtp_code = EXCLUDED.smtp_code,
    smtp_message = EXCLUDED.smtp_message,
    enhanced_status = EXCLUDED.enhanced_status,
    tls = EXCLUDED.tls,
    attempts = d.attempts + EXCLUDED.attempts,
    updated_at = EXCLUDED.updated_at
WHERE d.status = 'deferred'
"""

SQL_TRANSACTIONAL_STATE = """
SELECT status, attempts FROM transactional_deliveries WHERE organization_id = %s AND message_key = %s
"""

SQL_GET = """
SELECT campaign_id, subscriber_id, email, status, message_id, smtp_code, smtp_message, tls, attempts
FROM deliveries WHERE organization_id = %s AND campaign_id = %s AND subscriber_id = %s
"""


@dataclass(frozen=True)
class LedgerState:
    """A recipient's status so far, how many attempts it has had, and the last outcome's details."""

    status: str
    attempts: int
    email: str = ""
    message_id: str = ""
    smtp_code: int = 0
    smtp_message: str = ""
    enhanced_status: str = ""
    tls: bool = False
    updated_at: dt.datetime | None = None
    first_attempt_at: dt.datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """One delivery outcome to write to the ledger and report on NATS."""

    organization_id: int
    campaign_id: int
    subscriber_id: int
    email: str
    status: str
    message_id: str
    smtp_code: int
    smtp_message: str
    enhanced_status: str
    tls: bool
    # Which attempt this was (1 for the first); an expiry repeats the last attempt's number.
    attempt: int
    # False for an expiry: it records a decision, not another attempt.
    counts_attempt: bool
    occurred_at: dt.datetime
    # Set for a transactional message (campaign_id and subscriber_id 0): its idempotency key and kind.
    message_key: str = ""
    category: str = ""

    @classmethod
    def of(
        cls,
        result: DeliveryResult,
        *,
        organization_id: int,
        email: str,
        previous: LedgerState | None,
        message_id: str = "",
        campaign_id: int = 0,
        subscriber_id: int = 0,
        message_key: str = "",
        category: str = "",
    ) -> Outcome:
        """The outcome of an attempt (or, for a withheld message, of a decision that is no attempt)."""
        counts = result.outcome != SUPPRESSED
        return cls(
            organization_id=organization_id,
            campaign_id=campaign_id,
            subscriber_id=subscriber_id,
            email=email,
            status=result.outcome,
            message_id=message_id,
            smtp_code=result.code,
            smtp_message=result.message,
            enhanced_status=result.enhanced_status,
            tls=result.tls,
            attempt=(previous.attempts if previous else 0) + (1 if counts else 0),
            counts_attempt=counts,
            occurred_at=dt.datetime.now(dt.UTC),
            message_key=message_key,
            category=category,
        )


@dataclass(frozen=True)
class Delivery:
    """A ledger row as GetDelivery returns it."""

    campaign_id: int
    subscriber_id: int
    email: str
    status: str
    message_id: str
    smtp_code: int
    smtp_message: str
    tls: bool
    attempts: int


class DeliveryStore:
    """Reads and writes the ledger through the service's connection pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def states(self, campaign_id: int, subscriber_ids: Iterable[int]) -> dict[int, LedgerState]:
        """The ledger state of the given recipients of a campaign (absent ones have none yet)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_STATES, (campaign_id, list(subscriber_ids)))
            return {row[0]: LedgerState(*row[1:]) for row in await cur.fetchall()}

    async def claim(
        self, organization_id: int, campaign_id: int, recipients: Sequence[tuple[int, str]], owner: str, lease: float
    ) -> set[int]:
        """Claim (subscriber id, email) pairs for `owner` for `lease` seconds; return the ids now ours."""
        params = {
            "campaign": campaign_id,
            "organization": organization_id,
            "owner": owner,
            "lease": lease,
            "ids": [r[0] for r in recipients],
            "emails": [r[1] for r in recipients],
        }
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_CLAIM, params)
            return {row[0] for row in await cur.fetchall()}

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Write a group of outcomes (campaign and transactional) in one transaction."""
        rows = [
            (
                o.campaign_id,
                o.subscriber_id,
                o.organization_id,
                o.email,
                o.status,
                o.message_id,
                o.smtp_code,
                o.smtp_message,
                o.enhanced_status,
                o.tls,
                1 if o.counts_attempt else 0,
                o.occurred_at,
                o.occurred_at,
            )
            for o in outcomes
            if not o.message_key
        ]
        transactional = [
            (
                o.organization_id,
                o.message_key,
                o.category,
                o.email,
                o.status,
                o.message_id,
                o.smtp_code,
                o.smtp_message,
                o.enhanced_status,
                o.tls,
                1 if o.counts_attempt else 0,
                o.occurred_at,
                o.occurred_at,
            )
            for o in outcomes
            if o.message_key
        ]
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if rows:
                await cur.executemany(SQL_RECORD, rows)
            if transactional:
                await cur.executemany(SQL_RECORD_TRANSACTIONAL, transactional)

    async def transactional_state(self, organization_id: int, message_key: str) -> LedgerState | None:
        """The ledger state of one transactional message, or None before its first attempt."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_TRANSACTIONAL_STATE, (organization_id, message_key))
            row = await cur.fetchone()
        return LedgerState(row[0], row[1]) if row else None

    async def get(self, organization_id: int, campaign_id: int, subscriber_id: int) -> Delivery | None:
        """One recipient's ledger row, only within the organisation."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_GET, (organization_id, campaign_id, subscriber_id))
            row = await cur.fetchone()
        return Delivery(*row) if row else None
