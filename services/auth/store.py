"""Auth's SQL: organisations, users and API tokens in the `auth` schema."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import AlreadyExists, FailedPrecondition


@dataclass(frozen=True)
class Organization:
    """A customer of this mailblast installation."""

    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class User:
    """A person (or tool) of one organisation."""

    id: int
    organization_id: int
    login: str
    email: str
    role: str
    created_at: datetime


@dataclass(frozen=True)
class ApiToken:
    """What is known about a token; never its secret."""

    id: int
    organization_id: int
    user_id: int
    name: str
    scopes: list[str]
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class TokenHolder:
    """A token found by its secret, with the user it belongs to."""

    token_id: int
    prefix: str
    organization_id: int
    user_id: int
    scopes: list[str]
    role: str
    last_used_at: datetime | None
    revoked_at: datetime | None


# Bootstrap runs once per installation; the lock makes two racing bootstraps see each other.
BOOTSTRAP_LOCK = "SELECT pg_advisory_xact_lock(hashtext('mailblast-auth-bootstrap'))"
ANY_ORGANIZATION = "SELECT EXISTS (SELECT 1 FROM organizations)"
INSERT_ORGANIZATION = "INSERT INTO organizations (name) VALUES (%s) RETURNING id, name, created_at"

INSERT_USER = """
INSERT INTO users (organization_id, login, email, role) VALUES (%s, %s, %s, %s)
RETURNING id, organization_id, login, email, role, created_at
"""
SELECT_USERS = """
SELECT id, organization_id, login, email, role, created_at FROM users WHERE organization_id = %s ORDER BY id
"""
SELECT_USER = """
SELECT id, organization_id, login, email, role, created_at FROM users WHERE organization_id = %s AND id = %s
"""

# Names with "token" in them hold SQL, not secrets (hence the noqa for the hard-coded-password check).
INSERT_TOKEN = """
INSERT INTO api_tokens (organization_id, user_id, name, scopes, prefix, secret_hash)
VALUES (%s, %s, %s, %s, %s, %s)
RETURNING id, organization_id, user_id, name, scopes, prefix, created_at, last_used_at, revoked_at
"""  # noqa: S105
SELECT_TOKENS = """
SELECT id, organization_id, user_id, name, scopes, prefix, created_at, last_used_at, revoked_at
FROM api_tokens WHERE organization_id = %s ORDER BY id
"""
REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE organization_id = %s AND id = %s
RETURNING id, organization_id, user_id, name, scopes, prefix, created_at, last_used_at, revoked_at
"""  # noqa: S105
SELECT_TOKEN_HOLDER = """
SELECT t.id AS token_id, t.prefix, t.organization_id, t.user_id, t.scopes, u.role,
       t.last_used_at, t.revoked_at
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.secret_hash = %s
"""  # noqa: S105
# The condition repeats the caller's check so that racing requests still write once a minute at most.
TOUCH_TOKEN = """
UPDATE api_tokens SET last_used_at = now()
WHERE id = %s AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
"""  # noqa: S105


class AuthStore:
    """Reads and writes the auth schema through a pool bound to it."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def bootstrap(
        self, organization_name: str, login: str, email: str, token_prefix: str, token_hash: bytes
    ) -> tuple[Organization, User, ApiToken]:
        """Create the first organisation, its owner and an all-scopes token; refuse once one exists."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(BOOTSTRAP_LOCK)
            cur = await conn.execute(ANY_ORGANIZATION)
            row = await cur.fetchone()
            if row and row[0]:
                raise FailedPrecondition("already bootstrapped: an organisation exists; ask its admin for a token")
            org = await _one(conn, Organization, INSERT_ORGANIZATION, (organization_name,))
            user = await _one(conn, User, INSERT_USER, (org.id, login, email, "owner"))
            token = await _one(
                conn,
                ApiToken,
                INSERT_TOKEN,
                (org.id, user.id, "bootstrap", ["read", "send", "admin"], token_prefix, token_hash),
            )
            return org, user, token

    async def create_user(self, organization_id: int, login: str, email: str, role: str) -> User:
        """Add a user; refuse a login that is taken."""
        try:
            async with self._pool.connection() as conn:
                return await _one(conn, User, INSERT_USER, (organization_id, login, email, role))
        except psycopg.errors.UniqueViolation:
            raise AlreadyExists(f"login {login!r} is taken; choose another") from None

    async def list_users(self, organization_id: int) -> list[User]:
        """The organisation's users by id."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(User))
            await cur.execute(SELECT_USERS, (organization_id,))
            return await cur.fetchall()

    async def get_user(self, organization_id: int, user_id: int) -> User | None:
        """One user of the organisation, or None."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(User))
            await cur.execute(SELECT_USER, (organization_id, user_id))
            return await cur.fetchone()

    async def create_token(
        self,
        organization_id: int,
        user_id: int,
        name: str,
        scopes: tuple[str, ...],
        prefix: str,
        secret_hash: bytes,
    ) -> ApiToken:
        """Store a new token's hash."""
        async with self._pool.connection() as conn:
            params = (organization_id, user_id, name, list(scopes), prefix, secret_hash)
            return await _one(conn, ApiToken, INSERT_TOKEN, params)

    async def list_tokens(self, organization_id: int) -> list[ApiToken]:
        """The organisation's tokens by id."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ApiToken))
            await cur.execute(SELECT_TOKENS, (organization_id,))
            return await cur.fetchall()

    async def revoke_token(self, organization_id: int, token_id: int) -> ApiToken | None:
        """Mark a token revoked (keeping the first time); None if the organisation has no such token."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ApiToken))
            await cur.execute(REVOKE_TOKEN, (organization_id, token_id))
            return await cur.fetchone()

    async def find_token(self, secret_hash: bytes) -> TokenHolder | None:
        """The token with this secret hash and its user's role, or None."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(TokenHolder))
            await cur.execute(SELECT_TOKEN_HOLDER, (secret_hash,))
            return await cur.fetchone()

    async def touch_token(self, token_id: int) -> None:
        """Record that the token was used now (skipped if it was within the last minute)."""
        async with self._pool.connection() as conn:
            await conn.execute(TOUCH_TOKEN, (token_id,))


async def _one(conn: psycopg.AsyncConnection, cls: type, sql: str, params: tuple) -> object:
    cur = conn.cursor(row_factory=class_row(cls))
    await cur.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return row
