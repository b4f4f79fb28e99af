"""The delivery ledger (schema sender): the last outcome of each campaign recipient and transactional message.

DeliveryStore is the send path's Ledger (collaborators.py); its claim also reads the copies of
store_copies.py, in the same statement.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.common.erasure import Erasure, exclude_writers, hold_off_erasures
from services.common.privacy import email_hasher
from services.sender.collaborators import Claim
from services.sender.decisions import verdict_of
from services.sender.ledger import DeliveryStatus, LedgerState, Outcome

SCHEMA = "sender"
SERVICE = "sender"

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
# or are already ours; nothing while the campaign's copied state is paused or cancelled. An erased
# subscriber's row gets the keyed hash for the address. Returns one row per recipient claimed, with the
# reason it is withheld (erased, or its suppression in the copy) or NULL, and a row with NULL subscriber
# carrying the campaign's copied state when there is one: the whole send decision in one round trip.
SQL_CLAIM = """
WITH wanted AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(emails)s::text[], %(hashes)s::text[])
        AS w(subscriber_id, email, email_hash)
), gate AS (
    SELECT state FROM campaign_states_copy WHERE organization_id = %(organization)s AND campaign_id = %(campaign)s
), claimed AS (
    INSERT INTO deliveries AS d (campaign_id, subscriber_id, organization_id, email, status, claim_owner, claim_expires)
    SELECT %(campaign)s, w.subscriber_id, %(organization)s,
           coalesce((SELECT e.email_hash FROM erased_subscribers e
                     WHERE e.organization_id = %(organization)s AND e.subscriber_id = w.subscriber_id), w.email),
           'claimed', %(owner)s, now() + make_interval(secs => %(lease)s)
    FROM wanted w
    WHERE NOT EXISTS (SELECT 1 FROM gate WHERE state IN ('paused', 'cancelled'))
    ON CONFLICT (campaign_id, subscriber_id) DO UPDATE SET
        claim_owner = EXCLUDED.claim_owner,
        claim_expires = EXCLUDED.claim_expires
    WHERE d.status IN ('deferred', 'claimed')
      AND (d.claim_expires IS NULL OR d.claim_expires < now() OR d.claim_owner = EXCLUDED.claim_owner)
    RETURNING d.subscriber_id
)
-- Index look-ups per recipient (correlated), never a scan of the copies: they hold every suppression.
SELECT c.subscriber_id,
       CASE WHEN EXISTS (SELECT 1 FROM erased_subscribers e
                         WHERE e.organization_id = %(organization)s AND e.subscriber_id = c.subscriber_id)
            THEN 'erased'
            ELSE (SELECT s.reason FROM suppressions_copy s
                  WHERE s.organization_id = %(organization)s AND s.email_hash = w.email_hash)
       END,
       NULL
FROM claimed c JOIN wanted w ON w.subscriber_id = c.subscriber_id
UNION ALL
SELECT NULL, NULL, state FROM gate
"""

# A live sender keeps its claims by renewing them while it works, so the lease can be short: a killed
# sender's recipients lapse within one lease, not after the longest a delivery might take.
SQL_RENEW_CLAIMS = """
UPDATE deliveries SET claim_expires = now() + make_interval(secs => %(lease)s)
WHERE campaign_id = %(campaign)s AND claim_owner = %(owner)s AND status = 'claimed'
"""

SQL_RECORD_TRANSACTIONAL = """
INSERT INTO transactional_deliveries AS d (
    organization_id, message_key, category, email, status, message_id, smtp_code, smtp_message,
    enhanced_status, tls, attempts, first_attempt_at, updated_at, email_hash
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
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

SQL_ERASED_SUBSCRIBERS = """
SELECT e.organization_id, e.subscriber_id, e.email_hash
FROM erased_subscribers e JOIN unnest(%s::bigint[], %s::bigint[]) AS w(organization_id, subscriber_id)
  ON e.organization_id = w.organization_id AND e.subscriber_id = w.subscriber_id
"""

SQL_ERASED_HASHES = """
SELECT e.organization_id, e.email_hash, max(e.erased_at)
FROM erased_subscribers e JOIN unnest(%s::bigint[], %s::text[]) AS w(organization_id, email_hash)
  ON e.organization_id = w.organization_id AND e.email_hash = w.email_hash
GROUP BY e.organization_id, e.email_hash
"""

SQL_INSERT_ERASED = """
INSERT INTO erased_subscribers (organization_id, subscriber_id, email_hash, erased_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (organization_id, subscriber_id) DO NOTHING
"""

# The row stays, so a redelivered batch still finds the recipient final; the reply text may quote the address.
SQL_ERASE_DELIVERIES = """
UPDATE deliveries SET email = %(hash)s, smtp_message = ''
WHERE organization_id = %(organization)s AND subscriber_id = %(subscriber)s
  AND (email <> %(hash)s OR smtp_message <> '')
"""

SQL_UNHASHED_TRANSACTIONAL = """
SELECT message_key, email FROM transactional_deliveries WHERE organization_id = %s AND email_hash IS NULL
"""
SQL_SET_TRANSACTIONAL_HASH = """
UPDATE transactional_deliveries SET email_hash = %s WHERE organization_id = %s AND message_key = %s
"""
SQL_ERASE_TRANSACTIONAL = """
UPDATE transactional_deliveries SET email = email_hash, smtp_message = ''
WHERE organization_id = %(organization)s AND email_hash = %(hash)s AND (email <> email_hash OR smtp_message <> '')
"""

SQL_TRANSACTIONAL_STATE = """
SELECT status, attempts FROM transactional_deliveries WHERE organization_id = %s AND message_key = %s
"""

SQL_GET = """
SELECT campaign_id, subscriber_id, email, status, message_id, smtp_code, smtp_message, tls, attempts
FROM deliveries WHERE organization_id = %s AND campaign_id = %s AND subscriber_id = %s
"""


@dataclass(frozen=True)
class Delivery:
    """A ledger row as GetDelivery returns it."""

    campaign_id: int
    subscriber_id: int
    email: str
    status: DeliveryStatus
    message_id: str
    smtp_code: int
    smtp_message: str
    tls: bool
    attempts: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", DeliveryStatus(self.status))


class DeliveryStore:
    """Reads and writes the ledger through the service's connection pool."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes) -> None:
        self._pool = pool
        # The keyed hash lists sends in erasures, computed for transactional rows (they name no subscriber).
        self.email_hash = email_hasher(internal_key)

    async def states(self, campaign_id: int, subscriber_ids: Sequence[int]) -> dict[int, LedgerState]:
        """The ledger state of the given recipients of a campaign (absent ones have none yet)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_STATES, (campaign_id, list(subscriber_ids)))
            return {row[0]: LedgerState(DeliveryStatus(row[1]), *row[2:]) for row in await cur.fetchall()}

    async def claim(
        self, organization_id: int, campaign_id: int, recipients: Sequence[tuple[int, str]], owner: str, lease: float
    ) -> Claim:
        """Claim (subscriber id, email) pairs for `owner` for `lease` seconds, unless the campaign is halted;
        say which of them are withheld (erased, suppressed) and what the campaign's state is."""
        params = {
            "campaign": campaign_id,
            "organization": organization_id,
            "owner": owner,
            "lease": lease,
            "ids": [r[0] for r in recipients],
            "emails": [r[1] for r in recipients],
            "hashes": [self.email_hash(r[1]) for r in recipients],
        }
        async with self._pool.connection() as conn, conn.transaction():
            # Before reading which subscribers are erased: an erasure waits for this claim, or ends first.
            await hold_off_erasures(conn, SERVICE, [organization_id])
            cur = await conn.execute(SQL_CLAIM, params)
            rows = await cur.fetchall()
        state = next((row[2] for row in rows if row[0] is None), None)
        claimed = frozenset(row[0] for row in rows if row[0] is not None)
        withheld = {row[0]: row[1] for row in rows if row[0] is not None and row[1] is not None}
        return Claim(claimed, withheld, verdict_of(state))

    async def renew(self, campaign_id: int, owner: str, lease: float) -> int:
        """Extend `owner`'s claims on a campaign's recipients to `lease` seconds from now; how many it holds."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_RENEW_CLAIMS, {"campaign": campaign_id, "owner": owner, "lease": lease})
            return cur.rowcount

    async def erased_since(self, organization_id: int, email: str, asked_at: dt.datetime | None) -> bool:
        """Whether a subscriber with this address was erased at or after `asked_at` (None: ever)."""
        hashed = self.email_hash(email)
        async with self._pool.connection() as conn:
            found = await _erased_hashes(conn, [(organization_id, hashed)])
        erased_at = found.get((organization_id, hashed))
        return erased_at is not None and (asked_at is None or asked_at <= erased_at)

    async def erase(self, erasure: Erasure) -> None:
        """Keep only the keyed hash of an erased subscriber's address in the ledger (idempotent)."""
        org, hashed = erasure.organization_id, erasure.email_hash
        async with self._pool.connection() as conn, conn.transaction():
            await exclude_writers(conn, SERVICE, org)
            await conn.execute(SQL_INSERT_ERASED, (org, erasure.subscriber_id, hashed, erasure.erased_at))
            await conn.execute(
                SQL_ERASE_DELIVERIES, {"hash": hashed, "organization": org, "subscriber": erasure.subscriber_id}
            )
            cur = await conn.execute(SQL_UNHASHED_TRANSACTIONAL, (org,))
            unhashed = [(self.email_hash(email), org, key) for key, email in await cur.fetchall()]
            if unhashed:
                async with conn.cursor() as wcur:
                    await wcur.executemany(SQL_SET_TRANSACTIONAL_HASH, unhashed)
            # Every transactional row to the address, whenever sent: an erasure may take a little more, never less.
            await conn.execute(SQL_ERASE_TRANSACTIONAL, {"organization": org, "hash": hashed})

    async def record(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Write a group of outcomes (campaign and transactional) in one transaction; return them as written.

        An erased subscriber's outcome is written, and returned for the report, with the keyed hash in place
        of the address and without the server's reply text.
        """
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await hold_off_erasures(conn, SERVICE, {o.organization_id for o in outcomes})
            outcomes = await self._without_erased(conn, outcomes)
            rows, transactional = self._rows(outcomes)
            if rows:
                await cur.executemany(SQL_RECORD, rows)
            if transactional:
                await cur.executemany(SQL_RECORD_TRANSACTIONAL, transactional)
        return list(outcomes)

    async def _without_erased(self, conn: AsyncConnection, outcomes: Sequence[Outcome]) -> list[Outcome]:
        erased = await _erased_subscribers(
            conn, [(o.organization_id, o.subscriber_id) for o in outcomes if not o.message_key]
        )
        hashes = await _erased_hashes(
            conn, [(o.organization_id, self.email_hash(o.email)) for o in outcomes if o.message_key]
        )
        written = []
        for o in outcomes:
            if not o.message_key:
                hashed = erased.get((o.organization_id, o.subscriber_id))
            else:
                hashed = self.email_hash(o.email)
                erased_at = hashes.get((o.organization_id, hashed))
                # A message asked for after the erasure is to a person who came back: theirs to keep.
                if erased_at is None or (o.message_created_at is not None and o.message_created_at > erased_at):
                    hashed = None
            written.append(replace(o, email=hashed, smtp_message="") if hashed else o)
        return written

    def _rows(self, outcomes: Sequence[Outcome]) -> tuple[list[tuple], list[tuple]]:
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
                # An erased row already holds the hash where the address was.
                self.email_hash(o.email) if "@" in o.email else o.email,
            )
            for o in outcomes
            if o.message_key
        ]
        return rows, transactional

    async def transactional_state(self, organization_id: int, message_key: str) -> LedgerState | None:
        """The ledger state of one transactional message, or None before its first attempt."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_TRANSACTIONAL_STATE, (organization_id, message_key))
            row = await cur.fetchone()
        return LedgerState(DeliveryStatus(row[0]), row[1]) if row else None

    async def get(self, organization_id: int, campaign_id: int, subscriber_id: int) -> Delivery | None:
        """One recipient's ledger row, only within the organisation."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_GET, (organization_id, campaign_id, subscriber_id))
            row = await cur.fetchone()
        return Delivery(*row) if row else None


async def _erased_subscribers(conn: AsyncConnection, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """The keyed hash of each (organisation, subscriber) that was erased."""
    if not keys:
        return {}
    cur = await conn.execute(SQL_ERASED_SUBSCRIBERS, ([k[0] for k in keys], [k[1] for k in keys]))
    return {(org, subscriber): hashed for org, subscriber, hashed in await cur.fetchall()}


async def _erased_hashes(conn: AsyncConnection, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], dt.datetime]:
    """When each (organisation, keyed hash) was last erased."""
    if not keys:
        return {}
    cur = await conn.execute(SQL_ERASED_HASHES, ([k[0] for k in keys], [k[1] for k in keys]))
    return {(org, hashed): erased_at for org, hashed, erased_at in await cur.fetchall()}
