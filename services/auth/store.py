"""Auth's SQL: organisations, users, sessions, lockouts, tokens and audit events in the `auth` schema.

Over 400 lines, on purpose: one named statement and one short method per thing the schema is asked, for a
schema of 8 tables; what it returns is in records.py. Split by table, the transactions that span them
(a reset revokes sessions and clears lockouts; disabling a user locks the organisation's users) would have
no one home.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.auth.records import Account, ApiToken, AuditEvent, Organization, SessionRow, Strikes, TokenHolder, User
from services.common.errors import AlreadyExists, FailedPrecondition
from services.common.identity import peek_principal

BOOTSTRAP_LOCK = "SELECT pg_advisory_xact_lock(hashtext('mailblast-auth-bootstrap'))"
ANY_ORGANIZATION = "SELECT EXISTS (SELECT 1 FROM organizations)"
INSERT_ORGANIZATION = "INSERT INTO organizations (name) VALUES (%s) RETURNING id, name, created_at"

# A user's lock is the one of unknown clients (client ''): their browsers with a device cookie are not locked.
USER_LOCKED_UNTIL = "(SELECT l.locked_until FROM login_lockouts l WHERE l.login = {table}.login AND l.client = '')"
USER_COLUMNS = f"""id, organization_id, login, email, role, created_at, password_hash IS NOT NULL AS has_password,
totp_enabled_at IS NOT NULL AS totp_enabled, {USER_LOCKED_UNTIL.format(table="users")} AS locked_until, disabled_at"""
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
INSERT_USER = f"""
INSERT INTO users (organization_id, login, email, role) VALUES (%s, %s, %s, %s) RETURNING {USER_COLUMNS}
"""  # nosec B608
SELECT_USERS = f"SELECT {USER_COLUMNS} FROM users WHERE organization_id = %s ORDER BY id"  # nosec B608
SELECT_USER = f"SELECT {USER_COLUMNS} FROM users WHERE organization_id = %s AND id = %s"  # nosec B608
ACCOUNT_COLUMNS = f"""u.id, u.organization_id, u.login, u.email, u.role, u.created_at,
u.password_hash IS NOT NULL AS has_password, u.totp_enabled_at IS NOT NULL AS totp_enabled,
{USER_LOCKED_UNTIL.format(table="u")} AS locked_until, u.disabled_at, u.password_hash, u.totp_secret,
u.totp_pending_secret, u.totp_last_step, o.require_totp, o.name AS organization_name"""
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SELECT_ACCOUNT_BY_LOGIN = f"""
SELECT {ACCOUNT_COLUMNS} FROM users u JOIN organizations o ON o.id = u.organization_id WHERE u.login = %s
"""  # nosec B608
SELECT_ACCOUNT = f"""
SELECT {ACCOUNT_COLUMNS} FROM users u JOIN organizations o ON o.id = u.organization_id WHERE u.id = %s
"""  # nosec B608
# Every failure counts, locked or not. A failure more than `seconds` after the one before starts the count
# again; from `threshold` failures on, each one locks until `seconds` after it (so guessing on while
# locked keeps the lock). The failure that reaches the threshold is the one that starts the lock.
RECORD_LOGIN_FAILURE = """
INSERT INTO login_lockouts AS l (login, client, failures, last_failure_at, locked_until)
VALUES (%(login)s, %(client)s, 1, %(now)s, CASE WHEN %(threshold)s <= 1 THEN %(until)s END)
ON CONFLICT (login, client) DO UPDATE SET
    failures = CASE WHEN l.last_failure_at <= %(stale)s THEN 1 ELSE l.failures + 1 END,
    last_failure_at = %(now)s,
    locked_until = CASE WHEN (CASE WHEN l.last_failure_at <= %(stale)s THEN 1 ELSE l.failures + 1 END) >= %(threshold)s
                        THEN %(until)s END
RETURNING failures, locked_until
"""
# Rows whose last failure is older than the window neither lock nor count any more.
PRUNE_LOGIN_FAILURES = "DELETE FROM login_lockouts WHERE last_failure_at <= %s"
SELECT_LOCKED_UNTIL = """
SELECT locked_until FROM login_lockouts WHERE login = %s AND client = %s AND locked_until > %s
"""
CLEAR_LOGIN_FAILURES = "DELETE FROM login_lockouts WHERE login = %s AND client = %s"
CLEAR_ALL_LOGIN_FAILURES = "DELETE FROM login_lockouts WHERE login = %s"
SET_PASSWORD_HASH = "UPDATE users SET password_hash = %s WHERE id = %s"  # noqa: S105
# Failures of browsers without a device cookie: a throttle strangers trigger must not stop the owner's browsers.
COUNT_IP_FAILURES = """
SELECT count(*) FROM audit_events
WHERE action = 'login.failed' AND source_ip = %s AND at > %s AND detail->>'known_device' IS NULL
"""
INSERT_AUDIT = """
INSERT INTO audit_events (organization_id, user_id, service, source_ip, action, target, detail, api_token_id, at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, clock_timestamp()))
RETURNING id, organization_id, at, user_id, service, source_ip, action, target, detail, api_token_id
"""
SELECT_AUDIT = """
SELECT id, organization_id, at, user_id, service, source_ip, action, target, detail, api_token_id FROM audit_events
WHERE organization_id = %(org)s
  AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR at < %(until)s)
  AND (%(action)s = '' OR action = %(action)s OR (right(%(action)s, 1) = '.' AND starts_with(action, %(action)s)))
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC LIMIT %(limit)s
"""

# Sessions go by the service's clock (which tests move), not the database's: `now` is passed in.
SESSION_COLUMNS = """id, organization_id, user_id, totp_setup_only, created_at, last_seen_at, revoked_at, source_ip,
user_agent, %(now)s::timestamptz AS now"""
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
INSERT_SESSION = f"""
INSERT INTO sessions (token_hash, organization_id, user_id, totp_setup_only, source_ip, user_agent, created_at,
last_seen_at)
VALUES (%(token_hash)s, %(organization_id)s, %(user_id)s, %(setup_only)s, %(source_ip)s, %(user_agent)s, %(now)s,
%(now)s) RETURNING {SESSION_COLUMNS}
"""  # nosec B608
SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = %(token_hash)s"  # nosec B608
SELECT_USER_SESSIONS = f"""
SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = %(user_id)s AND revoked_at IS NULL ORDER BY id DESC
"""  # nosec B608
TOUCH_SESSION = "UPDATE sessions SET last_seen_at = %s WHERE id = %s"
REVOKE_SESSION = """
UPDATE sessions SET revoked_at = now(), revoked_reason = %s WHERE id = %s AND user_id = %s AND revoked_at IS NULL
"""
REVOKE_USER_SESSIONS = """
UPDATE sessions SET revoked_at = now(), revoked_reason = %s
WHERE user_id = %s AND revoked_at IS NULL AND id <> %s
"""

INSERT_USER_TOKEN = """
INSERT INTO user_tokens (token_hash, user_id, kind, expires_at)
VALUES (%s, %s, %s, now() + make_interval(secs => %s)) RETURNING id, expires_at
"""  # noqa: S105
# A new link makes earlier unused links of the same kind worthless.
EXPIRE_USER_TOKENS = """
UPDATE user_tokens SET used_at = now() WHERE user_id = %s AND kind = ANY(%s) AND used_at IS NULL
"""
SELECT_USER_TOKEN = """
SELECT id, user_id FROM user_tokens
WHERE token_hash = %s AND kind = ANY(%s) AND used_at IS NULL AND expires_at > now()
"""  # noqa: S105
CONSUME_USER_TOKEN = """
UPDATE user_tokens SET used_at = now() WHERE id = %s AND used_at IS NULL AND expires_at > now() RETURNING user_id
"""  # noqa: S105
RESET_PASSWORD = "UPDATE users SET password_hash = %s WHERE id = %s RETURNING login"  # noqa: S105

SET_TOTP_PENDING = "UPDATE users SET totp_pending_secret = %s WHERE id = %s"
SELECT_TOTP_SECRETS = (
    "SELECT id, totp_secret, totp_pending_secret FROM users"
    " WHERE totp_secret IS NOT NULL OR totp_pending_secret IS NOT NULL"
)
RESEAL_TOTP = {
    "totp_secret": "UPDATE users SET totp_secret = %s WHERE id = %s AND totp_secret = %s",
    "totp_pending_secret": "UPDATE users SET totp_pending_secret = %s WHERE id = %s AND totp_pending_secret = %s",
}
ENABLE_TOTP = """
UPDATE users SET totp_secret = totp_pending_secret, totp_pending_secret = NULL, totp_enabled_at = now(),
    totp_last_step = %s
WHERE id = %s AND totp_pending_secret = %s
"""
# The condition makes two racing logins with the same code see each other: only one advances the step.
ACCEPT_TOTP_STEP = "UPDATE users SET totp_last_step = %s WHERE id = %s AND totp_last_step < %s"
DISABLE_TOTP = """
UPDATE users SET totp_secret = NULL, totp_pending_secret = NULL, totp_enabled_at = NULL WHERE id = %s
"""
DELETE_RECOVERY_CODES = "DELETE FROM recovery_codes WHERE user_id = %s"
INSERT_RECOVERY_CODE = "INSERT INTO recovery_codes (user_id, code_hash) VALUES (%s, %s)"
USE_RECOVERY_CODE = """
UPDATE recovery_codes SET used_at = now() WHERE user_id = %s AND code_hash = %s AND used_at IS NULL RETURNING id
"""

SELECT_ORGANIZATION = "SELECT id, name, created_at, require_totp FROM organizations WHERE id = %s"
SET_REQUIRE_TOTP = """
UPDATE organizations SET require_totp = %s WHERE id = %s RETURNING id, name, created_at, require_totp
"""
LOCK_USERS = "SELECT id, role, disabled_at FROM users WHERE organization_id = %s ORDER BY id FOR UPDATE"
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SET_ROLE = f"UPDATE users SET role = %s WHERE organization_id = %s AND id = %s RETURNING {USER_COLUMNS}"  # nosec B608
DISABLE_USER = f"""
UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE organization_id = %s AND id = %s
RETURNING {USER_COLUMNS}
"""  # nosec B608
UNLOCK_USER = """
DELETE FROM login_lockouts WHERE login = (SELECT login FROM users WHERE organization_id = %s AND id = %s)
"""

# Names with "token" in them hold SQL, not secrets (hence the noqa for the hard-coded-password check).
INSERT_TOKEN = """
INSERT INTO api_tokens (organization_id, user_id, name, scopes, prefix, secret_hash)
VALUES (%s, %s, %s, %s, %s, %s)
RETURNING id, organization_id, user_id, name, scopes, prefix, created_at, last_used_at, revoked_at
"""  # noqa: S105
# user_id 0 stands for every user of the organisation (an admin's view).
SELECT_TOKENS = """
SELECT id, organization_id, user_id, name, scopes, prefix, created_at, last_used_at, revoked_at
FROM api_tokens WHERE organization_id = %(org)s AND (%(user)s = 0 OR user_id = %(user)s) ORDER BY id
"""
REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE organization_id = %(org)s AND id = %(token)s AND (%(user)s = 0 OR user_id = %(user)s)
RETURNING id, organization_id, user_id, name, scopes, prefix, created_at, last_used_at, revoked_at
"""  # noqa: S105
SELECT_TOKEN_HOLDER = """
SELECT t.id AS token_id, t.prefix, t.organization_id, t.user_id, t.scopes, u.role,
       t.last_used_at, t.revoked_at, u.disabled_at IS NOT NULL AS user_disabled
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
            raise AlreadyExists("login %(login)r is taken; choose another", login=login) from None

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

    async def list_tokens(self, organization_id: int, user_id: int = 0) -> list[ApiToken]:
        """The organisation's tokens by id: all of them, or one user's."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ApiToken))
            await cur.execute(SELECT_TOKENS, {"org": organization_id, "user": user_id})
            return await cur.fetchall()

    async def revoke_token(self, organization_id: int, token_id: int, user_id: int = 0) -> ApiToken | None:
        """Mark a token revoked (keeping the first time); None if the organisation (or that user) has no such token."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ApiToken))
            await cur.execute(REVOKE_TOKEN, {"org": organization_id, "token": token_id, "user": user_id})
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

    # -- account security

    async def account_by_login(self, login: str) -> Account | None:
        """The account with this login, or None."""
        return await self._fetch(Account, SELECT_ACCOUNT_BY_LOGIN, (login,))

    async def account(self, user_id: int) -> Account | None:
        """The account of a user id, or None."""
        return await self._fetch(Account, SELECT_ACCOUNT, (user_id,))

    async def record_login_failure(
        self, login: str, client: str, now: datetime, threshold: int, lockout_seconds: int
    ) -> Strikes:
        """Count a failed login of this login from this client (see RECORD_LOGIN_FAILURE)."""
        window = timedelta(seconds=lockout_seconds)
        params = {
            "login": login, "client": client, "now": now, "threshold": threshold, "until": now + window,
            "stale": now - window,
        }  # fmt: skip
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(PRUNE_LOGIN_FAILURES, (now - window,))
            cur = await conn.execute(RECORD_LOGIN_FAILURE, params)
            row = await cur.fetchone()
        assert row is not None
        return Strikes(row[0], row[1], row[0] == threshold)

    async def locked_until(self, login: str, client: str, now: datetime) -> datetime | None:
        """The end of the lock of this login for this client, or None when it is not locked."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SELECT_LOCKED_UNTIL, (login, client, now))
            row = await cur.fetchone()
        return row[0] if row else None

    async def clear_login_failures(self, login: str, client: str) -> None:
        """Forget the failures of this login from this client (it just logged in)."""
        await self._execute(CLEAR_LOGIN_FAILURES, (login, client))

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Replace the stored hash (a rehash with today's parameters, or a changed password)."""
        await self._execute(SET_PASSWORD_HASH, (password_hash, user_id))

    async def ip_failures(self, source_ip: str, since: datetime) -> int:
        """Failed logins from this address since then, by browsers without a device cookie."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(COUNT_IP_FAILURES, (source_ip, since))
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def audit(
        self,
        organization_id: int | None,
        user_id: int | None,
        action: str,
        target: str = "",
        detail: dict | None = None,
        source_ip: str = "",
        service: str = "",
        at: datetime | None = None,
    ) -> AuditEvent:
        """Append an event to the audit log (at the database's time unless `at` says when); the API token is
        the one the current caller presented, if any."""
        caller = peek_principal()
        token_id = caller.token_id if caller is not None and caller.organization_id == organization_id else 0
        params = (
            organization_id, user_id or None, service, source_ip, action, target, Jsonb(detail or {}), token_id or None,
            at,
        )  # fmt: skip
        async with self._pool.connection() as conn:
            return await _one(conn, AuditEvent, INSERT_AUDIT, params)

    async def list_audit(
        self,
        organization_id: int,
        since: datetime | None,
        until: datetime | None,
        action: str,
        limit: int,
        before_id: int | None,
    ) -> list[AuditEvent]:
        """The organisation's events, newest first, older than before_id."""  # fmt: skip
        params = {
            "org": organization_id, "since": since, "until": until, "action": action, "limit": limit,
            "before": before_id,
        }  # fmt: skip
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(AuditEvent))
            await cur.execute(SELECT_AUDIT, params)
            return await cur.fetchall()

    async def create_session(
        self, account: Account, token_hash: bytes, setup_only: bool, source_ip: str, user_agent: str, now: datetime
    ) -> SessionRow:
        """Open a session for the account, started `now`."""
        params = {
            "token_hash": token_hash, "organization_id": account.organization_id, "user_id": account.id,
            "setup_only": setup_only, "source_ip": source_ip, "user_agent": user_agent, "now": now,
        }  # fmt: skip
        async with self._pool.connection() as conn:
            return await _one(conn, SessionRow, INSERT_SESSION, params)

    async def session(self, token_hash: bytes, now: datetime) -> SessionRow | None:
        """The session with this token hash, or None."""
        return await self._fetch(SessionRow, SELECT_SESSION, {"token_hash": token_hash, "now": now})

    async def user_sessions(self, user_id: int, now: datetime) -> list[SessionRow]:
        """The user's sessions not revoked (some may have timed out), newest first."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SessionRow))
            await cur.execute(SELECT_USER_SESSIONS, {"user_id": user_id, "now": now})
            return await cur.fetchall()

    async def touch_session(self, session_id: int, now: datetime) -> None:
        """Record activity on a session, `now`."""
        await self._execute(TOUCH_SESSION, (now, session_id))

    async def revoke_session(self, session_id: int, user_id: int, reason: str) -> bool:
        """Revoke one of the user's sessions; False if there was no such live session."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(REVOKE_SESSION, (reason, session_id, user_id))
            return cur.rowcount == 1

    async def revoke_user_sessions(self, user_id: int, reason: str, except_session: int = 0) -> int:
        """Revoke all the user's live sessions but one; return how many."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(REVOKE_USER_SESSIONS, (reason, user_id, except_session))
            return cur.rowcount

    async def create_user_token(
        self, user_id: int, kind: str, token_hash: bytes, ttl_seconds: int, replaces: tuple[str, ...] = ()
    ) -> tuple[int, datetime]:
        """Store a single-use token's hash; earlier unused ones of the `replaces` kinds stop working."""
        async with self._pool.connection() as conn, conn.transaction():
            if replaces:
                await conn.execute(EXPIRE_USER_TOKENS, (user_id, list(replaces)))
            cur = await conn.execute(INSERT_USER_TOKEN, (token_hash, user_id, kind, ttl_seconds))
            row = await cur.fetchone()
        assert row is not None
        return row[0], row[1]

    async def find_user_token(self, token_hash: bytes, kinds: tuple[str, ...]) -> tuple[int, int] | None:
        """(token id, user id) of an unused, unexpired token of these kinds, or None."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SELECT_USER_TOKEN, (token_hash, list(kinds)))
            row = await cur.fetchone()
        return (row[0], row[1]) if row else None

    async def consume_user_token(self, token_id: int) -> bool:
        """Use a token up; False when it was used or expired meanwhile."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(CONSUME_USER_TOKEN, (token_id,))
            return cur.rowcount == 1

    async def reset_password(self, token_id: int, user_id: int, password_hash: str) -> int | None:
        """Consume the token, set the password, clear the login's lockouts and revoke all sessions, at once.

        Returns how many sessions were revoked, or None when the token was used or expired meanwhile.
        """
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(CONSUME_USER_TOKEN, (token_id,))
            if cur.rowcount != 1:
                return None
            cur = await conn.execute(RESET_PASSWORD, (password_hash, user_id))
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(CLEAR_ALL_LOGIN_FAILURES, (row[0],))
            cur = await conn.execute(REVOKE_USER_SESSIONS, ("password_reset", user_id, 0))
            return cur.rowcount

    async def reseal_totp_secrets(self, reseal: Callable[[str], str | None]) -> int:
        """Store each TOTP secret as `reseal` says (sealing plaintext, rotating old keys); how many changed."""
        changed = 0
        async with self._pool.connection() as conn:
            cur = await conn.execute(SELECT_TOTP_SECRETS)
            for user_id, *stored in await cur.fetchall():
                for column, old in zip(("totp_secret", "totp_pending_secret"), stored, strict=True):
                    new = reseal(old) if old is not None else None
                    if new is not None:
                        # Only if unchanged meanwhile: another replica may be doing the same.
                        done = await conn.execute(RESEAL_TOTP[column], (new, user_id, old))
                        changed += done.rowcount
        return changed

    async def set_totp_pending(self, user_id: int, secret: str) -> None:
        """Keep a secret being set up (it replaces any earlier pending one)."""
        await self._execute(SET_TOTP_PENDING, (secret, user_id))

    async def enable_totp(self, user_id: int, pending_secret: str, step: int, code_hashes: list[bytes]) -> bool:
        """Make the pending secret the user's and replace the recovery codes; False if the secret changed meanwhile."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(ENABLE_TOTP, (step, user_id, pending_secret))
            if cur.rowcount != 1:
                return False
            await conn.execute(DELETE_RECOVERY_CODES, (user_id,))
            async with conn.cursor() as c:
                await c.executemany(INSERT_RECOVERY_CODE, [(user_id, h) for h in code_hashes])
            return True

    async def accept_totp_step(self, user_id: int, step: int) -> bool:
        """Record a used time step; False when it (or a later one) was used already: a replay."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(ACCEPT_TOTP_STEP, (step, user_id, step))
            return cur.rowcount == 1

    async def use_recovery_code(self, user_id: int, code_hash: bytes) -> bool:
        """Use up a recovery code; False if it is unknown or used."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(USE_RECOVERY_CODE, (user_id, code_hash))
            return cur.rowcount == 1

    async def disable_totp(self, user_id: int) -> None:
        """Forget the user's TOTP secret and recovery codes."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(DISABLE_TOTP, (user_id,))
            await conn.execute(DELETE_RECOVERY_CODES, (user_id,))

    async def organization(self, organization_id: int) -> tuple[Organization, bool] | None:
        """The organisation and its require_totp setting, or None."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SELECT_ORGANIZATION, (organization_id,))
            row = await cur.fetchone()
        return (Organization(row[0], row[1], row[2]), row[3]) if row else None

    async def set_require_totp(self, organization_id: int, require: bool) -> tuple[Organization, bool]:
        """Change the organisation's TOTP requirement."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(SET_REQUIRE_TOTP, (require, organization_id))
            row = await cur.fetchone()
        assert row is not None
        return Organization(row[0], row[1], row[2]), row[3]

    async def change_role_or_disable(self, organization_id: int, user_id: int, role: str | None) -> User | None:
        """Set a user's role (or disable them when role is None), refusing to leave no active owner.

        Returns None when the organisation has no such user. Disabling also revokes sessions.
        """
        async with self._pool.connection() as conn, conn.transaction():
            # Locking the organisation's users serialises two admins demoting the last two owners at once.
            cur = await conn.execute(LOCK_USERS, (organization_id,))
            rows = await cur.fetchall()
            target = next((r for r in rows if r[0] == user_id), None)
            if target is None:
                return None
            active_owners = [r[0] for r in rows if r[1] == "owner" and r[2] is None]
            loses_owner = target[1] == "owner" and (role is None or role != "owner")
            if loses_owner and active_owners == [user_id]:
                raise FailedPrecondition("this is the last owner: make another user owner first")
            if role is None:
                user = await _one(conn, User, DISABLE_USER, (organization_id, user_id))
                await conn.execute(REVOKE_USER_SESSIONS, ("user_disabled", user_id, 0))
                return user
            return await _one(conn, User, SET_ROLE, (role, organization_id, user_id))

    async def unlock(self, organization_id: int, user_id: int) -> User | None:
        """Lift every lockout of the user's login (unknown clients and device cookies); None for no such user."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(UNLOCK_USER, (organization_id, user_id))
            cur = conn.cursor(row_factory=class_row(User))
            await cur.execute(SELECT_USER, (organization_id, user_id))
            return await cur.fetchone()

    async def _fetch(self, cls: type, sql: str, params: tuple | dict) -> object | None:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(cls))
            await cur.execute(sql, params)
            return await cur.fetchone()

    async def _execute(self, sql: str, params: tuple) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(sql, params)


async def _one(conn: psycopg.AsyncConnection, cls: type, sql: str, params: tuple) -> object:
    cur = conn.cursor(row_factory=class_row(cls))
    await cur.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return row
