"""The campaigns schema's sending domains and their DKIM keys (sql/0008_sending_domains.sql)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.campaigns.domains import NewKey, PublishedKey
from services.common.errors import AlreadyExists, FailedPrecondition


@dataclass
class DomainRow:
    """One sending domain of an organisation, with the public side of its keys."""

    id: int
    organization_id: int
    domain: str
    return_path_host: str
    verified_at: dt.datetime | None
    last_check: dict | None
    checked_at: dt.datetime | None
    created_at: dt.datetime
    keys: list[PublishedKey]


_COLUMNS = (
    "d.id, d.organization_id, d.domain, d.return_path_host, d.verified_at, d.last_check, d.checked_at, d.created_at"
)
# The newest generation's keys, RSA first.
_KEYS = """
SELECT selector, algorithm, public_record FROM dkim_keys
WHERE domain_id = %s AND generation = (SELECT max(generation) FROM dkim_keys WHERE domain_id = %s)
ORDER BY algorithm DESC
"""
SQL_VERIFIED_ELSEWHERE = (
    "SELECT 1 FROM sending_domains WHERE domain = %s AND organization_id <> %s AND verified_at IS NOT NULL"
)
SQL_INSERT_DOMAIN = """
INSERT INTO sending_domains (organization_id, domain, return_path_host) VALUES (%s, %s, %s)
ON CONFLICT (organization_id, domain) DO NOTHING RETURNING id
"""
SQL_INSERT_KEY = """
INSERT INTO dkim_keys (domain_id, generation, selector, algorithm, sealed_private_key, public_record)
VALUES (%s, %s, %s, %s, %s, %s)
"""
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SQL_LIST = f"SELECT {_COLUMNS} FROM sending_domains d WHERE d.organization_id = %s ORDER BY d.domain"  # nosec B608
SQL_GET = f"SELECT {_COLUMNS} FROM sending_domains d WHERE d.organization_id = %s AND d.id = %s"  # nosec B608
SQL_SAVE_CHECK = """
UPDATE sending_domains SET last_check = %s, checked_at = %s,
    verified_at = CASE WHEN NOT %s THEN verified_at WHEN %s THEN coalesce(verified_at, %s) ELSE NULL END
WHERE organization_id = %s AND id = %s
"""
SQL_VERIFIED = "SELECT domain FROM sending_domains WHERE organization_id = %s AND verified_at IS NOT NULL"
SQL_DELETE = "DELETE FROM sending_domains WHERE organization_id = %s AND id = %s RETURNING id"
SQL_SEALED = "SELECT id, sealed_private_key FROM dkim_keys ORDER BY id"
SQL_RESEAL = "UPDATE dkim_keys SET sealed_private_key = %s WHERE id = %s"


class DomainStore:
    """Sending domains through the service's pool; every query scoped by organisation."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def add(
        self, organization_id: int, domain: str, return_path_host: str, keys: Sequence[tuple[NewKey, str]]
    ) -> DomainRow:
        """Store a new domain with its first keys (each with its sealed private key), all or nothing."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(SQL_VERIFIED_ELSEWHERE, (domain, organization_id))
            if await cur.fetchone():
                raise FailedPrecondition("%(domain)s is verified by another organisation", domain=domain)
            cur = await conn.execute(SQL_INSERT_DOMAIN, (organization_id, domain, return_path_host))
            row = await cur.fetchone()
            if row is None:
                raise AlreadyExists("%(domain)s is already a sending domain of your organisation", domain=domain)
            for key, sealed in keys:
                await conn.execute(SQL_INSERT_KEY, (row[0], 1, key.selector, key.algorithm, sealed, key.public_record))
        found = await self.get(organization_id, row[0])
        assert found is not None
        return found

    async def _with_keys(self, conn: psycopg.AsyncConnection, rows: list[DomainRow]) -> list[DomainRow]:
        for row in rows:
            cur = await conn.execute(_KEYS, (row.id, row.id))
            row.keys = [PublishedKey(*key) for key in await cur.fetchall()]
        return rows

    async def list(self, organization_id: int) -> list[DomainRow]:
        """The organisation's domains by name."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(_Row))
            await cur.execute(SQL_LIST, (organization_id,))
            return await self._with_keys(conn, [r.row() for r in await cur.fetchall()])

    async def get(self, organization_id: int, domain_id: int) -> DomainRow | None:
        """One domain of the organisation, or None (also for another organisation's)."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(_Row))
            await cur.execute(SQL_GET, (organization_id, domain_id))
            found = await cur.fetchone()
            return (await self._with_keys(conn, [found.row()]))[0] if found else None

    async def save_check(
        self, organization_id: int, domain_id: int, check: dict, conclusive: bool, verified: bool, at: dt.datetime
    ) -> None:
        """Keep a check's result; a conclusive one sets or clears the verification."""
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    SQL_SAVE_CHECK,
                    (json.dumps(check, ensure_ascii=False), at, conclusive, verified, at, organization_id, domain_id),
                )
        except psycopg.errors.UniqueViolation:
            raise FailedPrecondition("this domain was verified by another organisation in the meantime") from None

    async def verified_domains(self, organization_id: int) -> set[str]:
        """The organisation's verified domains."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_VERIFIED, (organization_id,))
            return {row[0] for row in await cur.fetchall()}

    async def delete(self, organization_id: int, domain_id: int) -> bool:
        """Remove a domain and its keys; False when there is none."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SQL_DELETE, (organization_id, domain_id))
            return await cur.fetchone() is not None

    async def reseal(self, reseal: Callable[[str], str | None]) -> int:
        """Store each private key as `reseal` says (an older sealing key's seal resealed); how many changed."""
        changed = 0
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(SQL_SEALED)
            for key_id, sealed in await cur.fetchall():
                fresh = reseal(sealed)
                if fresh is not None:
                    await conn.execute(SQL_RESEAL, (fresh, key_id))
                    changed += 1
        return changed


@dataclass
class _Row:
    id: int
    organization_id: int
    domain: str
    return_path_host: str
    verified_at: dt.datetime | None
    last_check: dict | None
    checked_at: dt.datetime | None
    created_at: dt.datetime

    def row(self) -> DomainRow:
        return DomainRow(**vars(self), keys=[])
