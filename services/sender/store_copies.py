"""The sender's copies of campaign states, suppression lists and sending domains (schema sender), fed from NATS.

The campaign gate and the suppression list of the send path (collaborators.py) read them here; the
batch claim reads them in its own statement (store.SQL_CLAIM); the signing keys (signing.py) read the
domains. See sql/0006_copies.sql and sql/0007_sending_domains_copy.sql.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from psycopg_pool import AsyncConnectionPool

from services.common.privacy import email_hasher
from services.sender.decisions import Verdict, verdict_of
from services.sender.signing import CopiedDomain, DomainKey

SQL_APPLY_CAMPAIGN_STATES = """
INSERT INTO campaign_states_copy AS c (organization_id, campaign_id, state, version, changed_at)
SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[])
ON CONFLICT (organization_id, campaign_id) DO UPDATE
SET state = EXCLUDED.state, version = EXCLUDED.version, changed_at = EXCLUDED.changed_at
WHERE c.version < EXCLUDED.version
"""

SQL_APPLY_SUPPRESSIONS = """
INSERT INTO suppressions_copy AS s (organization_id, email_hash, reason, version, changed_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::timestamptz[])
ON CONFLICT (organization_id, email_hash) DO UPDATE
SET reason = EXCLUDED.reason, version = EXCLUDED.version, changed_at = EXCLUDED.changed_at
WHERE s.version < EXCLUDED.version
"""

SQL_APPLY_SENDING_DOMAINS = """
INSERT INTO sending_domains_copy AS d
    (organization_id, domain_id, domain, verified, return_path_domain, keys, version, changed_at)
SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::boolean[], %s::text[], %s::jsonb[], %s::bigint[],
                     %s::timestamptz[])
ON CONFLICT (organization_id, domain_id) DO UPDATE
SET domain = EXCLUDED.domain, verified = EXCLUDED.verified, return_path_domain = EXCLUDED.return_path_domain,
    keys = EXCLUDED.keys, version = EXCLUDED.version, changed_at = EXCLUDED.changed_at
WHERE d.version < EXCLUDED.version
"""

SQL_VERIFIED_DOMAINS = """
SELECT organization_id, domain_id, domain, return_path_domain, keys, version FROM sending_domains_copy
WHERE domain = %s AND verified
"""

SQL_CAMPAIGN_STATE = "SELECT state FROM campaign_states_copy WHERE organization_id = %s AND campaign_id = %s"

SQL_SUPPRESSED = """
SELECT email_hash, reason FROM suppressions_copy
WHERE organization_id = %s AND email_hash = ANY(%s) AND reason IS NOT NULL
"""


@dataclass(frozen=True)
class CampaignStateChange:
    """A campaign's new state (as campaigns names it: draft, sending, paused, sent, cancelled)."""

    organization_id: int
    campaign_id: int
    state: str
    version: int
    changed_at: dt.datetime | None = None


@dataclass(frozen=True)
class SuppressionChange:
    """An address (by keyed hash) put on an organisation's suppression list for `reason`, or taken off (None)."""

    organization_id: int
    email_hash: str
    reason: str | None
    version: int
    changed_at: dt.datetime | None = None


@dataclass(frozen=True)
class SendingDomainChange:
    """A sending domain's current state: verified or not (deleted: not, with no domain), its keys (sealed)."""

    organization_id: int
    domain_id: int
    domain: str
    verified: bool
    return_path_domain: str
    keys: tuple[DomainKey, ...]
    version: int
    changed_at: dt.datetime | None = None


C = TypeVar("C", CampaignStateChange, SuppressionChange, SendingDomainChange)


def _newest(changes: Sequence[C], key: Callable[[C], tuple]) -> list[C]:
    """The newest change of each key: one statement cannot update a row twice."""
    newest: dict[tuple, C] = {}
    for change in changes:
        k = key(change)
        if k not in newest or newest[k].version < change.version:
            newest[k] = change
    return list(newest.values())


class CopyStore:
    """Reads and writes the copies through the service's connection pool."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes) -> None:
        self._pool = pool
        self.email_hash = email_hasher(internal_key)

    async def apply_campaign_states(self, changes: Sequence[CampaignStateChange]) -> list[None]:
        """Keep each campaign's newest state (one statement for the group)."""
        rows = _newest(changes, lambda c: (c.organization_id, c.campaign_id))
        async with self._pool.connection() as conn:
            await conn.execute(
                SQL_APPLY_CAMPAIGN_STATES,
                ([c.organization_id for c in rows], [c.campaign_id for c in rows], [c.state for c in rows],
                 [c.version for c in rows], [c.changed_at for c in rows]),
            )  # fmt: skip
        return [None] * len(changes)

    async def apply_suppressions(self, changes: Sequence[SuppressionChange]) -> list[None]:
        """Keep each address's newest suppression state (one statement for the group)."""
        rows = _newest(changes, lambda c: (c.organization_id, c.email_hash))
        async with self._pool.connection() as conn:
            await conn.execute(
                SQL_APPLY_SUPPRESSIONS,
                ([c.organization_id for c in rows], [c.email_hash for c in rows], [c.reason for c in rows],
                 [c.version for c in rows], [c.changed_at for c in rows]),
            )  # fmt: skip
        return [None] * len(changes)

    async def apply_sending_domains(self, changes: Sequence[SendingDomainChange]) -> list[None]:
        """Keep each domain's newest state (one statement for the group)."""
        rows = _newest(changes, lambda c: (c.organization_id, c.domain_id))
        keys = [
            json.dumps(
                [{"selector": k.selector, "algorithm": k.algorithm, "sealed": k.sealed_private_key} for k in c.keys]
            )
            for c in rows
        ]
        async with self._pool.connection() as conn:
            await conn.execute(
                SQL_APPLY_SENDING_DOMAINS,
                ([c.organization_id for c in rows], [c.domain_id for c in rows], [c.domain for c in rows],
                 [c.verified for c in rows], [c.return_path_domain for c in rows], keys, [c.version for c in rows],
                 [c.changed_at for c in rows]),
            )  # fmt: skip
        return [None] * len(changes)

    async def verified_domains(self, domain: str) -> list[CopiedDomain]:
        """Every verified copy of `domain`, whichever organisation's."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_VERIFIED_DOMAINS, (domain,))
            rows = await cur.fetchall()
        return [
            CopiedDomain(org, domain_id, name, return_path, tuple(
                DomainKey(k["selector"], k["algorithm"], k["sealed"]) for k in keys
            ), version)
            for org, domain_id, name, return_path, keys, version in rows
        ]  # fmt: skip

    async def verdict(self, organization_id: int, campaign_id: int) -> Verdict:
        """GO, PAUSED or CANCELLED by the campaign's state in the copy (not there yet: GO)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_CAMPAIGN_STATE, (organization_id, campaign_id))
            row = await cur.fetchone()
        return verdict_of(row[0] if row else None)

    async def suppressed(self, organization_id: int, emails: Sequence[str]) -> dict[str, str]:
        """The suppressed ones among `emails` (as given) with their reasons."""
        if not emails:
            return {}
        hashes = {self.email_hash(email): email for email in emails}
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_SUPPRESSED, (organization_id, list(hashes)))
            return {hashes[hashed]: reason for hashed, reason in await cur.fetchall()}
