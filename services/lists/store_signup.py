"""Lists' SQL for consent: signup forms and double opt-in, unsubscribes, and the settings of the mails they send."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound
from services.common.privacy import email_hash
from services.lists.signup import ConfirmationLimits
from services.lists.store_subscribers import record_status
from services.lists.store_suppression import suppress
from services.lists.suppression import LIFTED_BY_CONSENT, SuppressionReason

SELECT_SETTINGS = """
SELECT confirm_unsubscribe, sender_address, sender_name FROM organization_settings WHERE organization_id = %s
"""
UPSERT_SETTINGS = """
INSERT INTO organization_settings (organization_id, confirm_unsubscribe, sender_address, sender_name) VALUES
(%s, %s, %s, %s) ON CONFLICT (organization_id) DO UPDATE SET confirm_unsubscribe =
excluded.confirm_unsubscribe, sender_address = excluded.sender_address, sender_name = excluded.sender_name
"""
LOCK_SUBSCRIBER = """
SELECT status, email, name FROM subscribers WHERE organization_id = %s AND id = %s FOR UPDATE
"""
LEAVE_LISTS = """
DELETE FROM list_subscriptions WHERE subscriber_id = %s AND (%s::bigint[] = '{}' OR list_id = ANY(%s))
RETURNING list_id
"""
COUNT_LISTS = """
SELECT count(*) FROM list_subscriptions WHERE subscriber_id = %s
"""
SET_UNSUBSCRIBED = """
UPDATE subscribers SET status = 'unsubscribed', updated_at = now() WHERE id = %s
"""
SELECT_SUBSCRIBER = """
SELECT email, status FROM subscribers WHERE organization_id = %s AND id = %s
"""
SELECT_SUBSCRIBER_LISTS = """
SELECT l.id, l.name, l.description FROM list_subscriptions ls JOIN lists l ON l.id = ls.list_id WHERE
ls.subscriber_id = %s ORDER BY l.id
"""
INSERT_FORM = """
INSERT INTO signup_forms (organization_id, list_id, name, field_keys, ask_name, redirect_url, thanks_text)
VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *
"""
SELECT_FORMS = """
SELECT * FROM signup_forms WHERE (%s::bigint IS NULL OR organization_id = %s) AND (%s::bigint IS NULL OR id =
%s) ORDER BY id
"""
LOCK_SIGNUP_SOURCE = """
SELECT pg_advisory_xact_lock(hashtext('mailblast-signup:' || %s))
"""
FORGET_OLD_ATTEMPTS = """
DELETE FROM signup_attempts WHERE source_ip = %s AND attempted_at < now() - interval '1 hour'
"""
COUNT_ATTEMPTS = """
SELECT count(*) FROM signup_attempts WHERE source_ip = %s
"""
INSERT_ATTEMPT = """
INSERT INTO signup_attempts (source_ip) VALUES (%s)
"""
LOCK_CONFIRMATIONS = """
SELECT pg_advisory_xact_lock(hashtext('mailblast-confirm:' || %s || ':' || %s))
"""
FORGET_OLD_CONFIRMATIONS = """
DELETE FROM confirmation_mails WHERE organization_id = %s AND email_hash = %s AND sent_at <= %s
"""
COUNT_CONFIRMATIONS = """
SELECT count(*), count(*) FILTER (WHERE form_id = %s AND sent_at > %s) FROM confirmation_mails WHERE
organization_id = %s AND email_hash = %s
"""
INSERT_CONFIRMATION_MAIL = """
INSERT INTO confirmation_mails (organization_id, email_hash, form_id, sent_at) VALUES (%s, %s, %s, %s)
"""
UPSERT_PENDING_SUBSCRIBER = """
INSERT INTO subscribers (organization_id, email, name, attributes, status) VALUES (%s, %s, %s, %s, 'pending')
ON CONFLICT (organization_id, lower(email)) DO UPDATE SET updated_at = now() RETURNING id, (xmax = 0)
"""
INSERT_CONSENT = """
INSERT INTO consents (subscriber_id, form_id, token_hash, source_ip, user_agent) VALUES (%s, %s, %s, %s, %s)
"""
SELECT_CONFIRMATION = """
SELECT c.id AS consent_id, c.subscriber_id, c.confirmed_at, f.id AS form_id, f.list_id, f.organization_id,
f.thanks_text, f.redirect_url, s.status, s.email FROM consents c JOIN signup_forms f ON f.id = c.form_id JOIN
subscribers s ON s.id = c.subscriber_id WHERE c.token_hash = %s FOR UPDATE OF c, s
"""
CONFIRM_CONSENT = """
UPDATE consents SET confirmed_at = now() WHERE id = %s
"""
SET_ACTIVE = """
UPDATE subscribers SET status = 'active', updated_at = now() WHERE id = %s
"""
SUBSCRIBE_TO_FORM_LIST = """
INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (%s, %s) ON CONFLICT DO NOTHING
"""
LIFT_SUPPRESSION = """
DELETE FROM suppressions WHERE organization_id = %s AND email_hash = %s AND reason = ANY(%s)
"""


@dataclass(frozen=True)
class Settings:
    """An organisation's lists settings."""

    confirm_unsubscribe: bool
    sender_address: str
    sender_name: str


@dataclass(frozen=True)
class FormRow:
    """A signup form."""

    id: int
    organization_id: int
    list_id: int
    name: str
    field_keys: list[str]
    ask_name: bool
    redirect_url: str
    thanks_text: str
    created_at: datetime


@dataclass(frozen=True)
class Confirmation:
    """A consent a confirmation link names, with its form and subscriber."""

    consent_id: int
    subscriber_id: int
    confirmed_at: datetime | None
    form_id: int
    list_id: int
    organization_id: int
    thanks_text: str
    redirect_url: str
    status: str
    email: str


class SignupStore:
    """The signup_forms, consents, signup_attempts, confirmation_mails and organization_settings tables."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes) -> None:
        self.pool = pool
        self.key = internal_key

    async def settings(self, org: int) -> Settings:
        """The organisation's lists settings (defaults when never set)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Settings))
            await cur.execute(
                SELECT_SETTINGS,
                (org,),
            )
            row = await cur.fetchone()
        return row or Settings(False, "", "")

    async def update_settings(self, org: int, confirm: bool, address: str, name: str) -> Settings:
        """Store the organisation's lists settings."""
        async with self.pool.connection() as conn:
            await conn.execute(
                UPSERT_SETTINGS,
                (org, confirm, address, name),
            )
        return await self.settings(org)

    async def unsubscribe(
        self, org: int, subscriber_id: int, list_ids: Sequence[int], source: str
    ) -> tuple[list[int], str, str, str]:
        """Leave the lists (all when none given; then the address is unsubscribed and suppressed), committed."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                LOCK_SUBSCRIBER,
                (org, subscriber_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("this unsubscribe link names nobody we hold")
            status, email, name = row
            cur = await conn.execute(
                LEAVE_LISTS,
                (subscriber_id, list(list_ids), list(list_ids)),
            )
            left = sorted(r[0] for r in await cur.fetchall())
            cur = await conn.execute(COUNT_LISTS, (subscriber_id,))
            remaining = (await cur.fetchone())[0]
            if left:
                await record_status(conn, subscriber_id, status, status, "left_lists", f"{source}: {left}")
            if (not list_ids or remaining == 0) and status in ("active", "pending"):
                await conn.execute(SET_UNSUBSCRIBED, (subscriber_id,))
                await record_status(conn, subscriber_id, status, "unsubscribed", "unsubscribe", source)
                status = "unsubscribed"
            if not list_ids:
                await suppress(conn, self.key, org, email, SuppressionReason.UNSUBSCRIBED, source)
        return left, status, email, name

    async def subscriber_lists(self, org: int, subscriber_id: int) -> tuple[str, str, list[tuple[int, str, str]]]:
        """The subscriber's address, status and lists (id, name, description)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(SELECT_SUBSCRIBER, (org, subscriber_id))
            row = await cur.fetchone()
            if row is None:
                raise NotFound("this unsubscribe link names nobody we hold")
            cur = await conn.execute(
                SELECT_SUBSCRIBER_LISTS,
                (subscriber_id,),
            )
            return row[0], row[1], await cur.fetchall()

    async def create_form(self, org: int, list_id: int, name: str, keys: list[str], ask_name: bool, redirect: str,
                          thanks: str) -> FormRow:  # fmt: skip
        """Save a signup form."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(FormRow))
            await cur.execute(
                INSERT_FORM,
                (org, list_id, name, json.dumps(keys), ask_name, redirect, thanks),
            )
            return await cur.fetchone()

    async def forms(self, org: int | None, form_id: int | None = None) -> list[FormRow]:
        """Forms of an organisation, or one form by id whatever its organisation (public signup)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(FormRow))
            await cur.execute(
                SELECT_FORMS,
                (org, org, form_id, form_id),
            )
            return await cur.fetchall()

    async def signup_allowed(self, source_ip: str, per_hour: int) -> bool:
        """Count this attempt; False when the address has tried more than `per_hour` times in the last hour."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(LOCK_SIGNUP_SOURCE, (source_ip,))
            await conn.execute(
                FORGET_OLD_ATTEMPTS,
                (source_ip,),
            )
            cur = await conn.execute(COUNT_ATTEMPTS, (source_ip,))
            seen = (await cur.fetchone())[0]
            if seen >= per_hour:
                return False
            await conn.execute(INSERT_ATTEMPT, (source_ip,))
            return True

    async def submit_signup(
        self,
        org: int,
        form_id: int,
        email: str,
        name: str,
        attributes_json: str,
        token_hash: str,
        ip: str,
        agent: str,
        confirmation: ConfirmationLimits,
        send: Callable[[int], Awaitable[None]],
    ) -> int | None:
        """Create (or find) the subscriber, pending when new, and a consent; `send` mails the confirmation.

        None, with nothing changed and nothing sent, when this address had its confirmation mail from
        this form within the window, or its daily number of them from the organisation. `send` runs
        inside the transaction: a mail that could not be handed on records nothing.
        """
        hashed = email_hash(self.key, email)
        now = confirmation.now
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(LOCK_CONFIRMATIONS, (org, hashed))
            await conn.execute(
                FORGET_OLD_CONFIRMATIONS,
                (org, hashed, now - timedelta(days=1)),
            )
            cur = await conn.execute(
                COUNT_CONFIRMATIONS,
                (form_id, now - confirmation.window, org, hashed),
            )
            today, this_form = await cur.fetchone()
            if this_form or today >= confirmation.daily_cap:
                return None
            await conn.execute(
                INSERT_CONFIRMATION_MAIL,
                (org, hashed, form_id, now),
            )
            cur = await conn.execute(
                UPSERT_PENDING_SUBSCRIBER,
                (org, email, name, attributes_json),
            )
            subscriber_id, inserted = await cur.fetchone()
            if inserted:
                await record_status(conn, subscriber_id, None, "pending", "signup", f"form {form_id}")
            await conn.execute(
                INSERT_CONSENT,
                (subscriber_id, form_id, token_hash, ip[:100], agent[:500]),
            )
            await send(subscriber_id)
            return subscriber_id

    async def confirm_signup(self, token_hash: str) -> Confirmation:
        """Confirm a consent: activate, subscribe to the form's list, lift an unsubscribe suppression."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(Confirmation))
            await cur.execute(
                SELECT_CONFIRMATION,
                (token_hash,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("this confirmation link is not valid (or was already used and erased)")
            if row.confirmed_at is None:
                await conn.execute(CONFIRM_CONSENT, (row.consent_id,))
                if row.status in ("pending", "unsubscribed"):
                    await conn.execute(
                        SET_ACTIVE,
                        (row.subscriber_id,),
                    )
                    await record_status(
                        conn, row.subscriber_id, row.status, "active", "confirmed", f"form {row.form_id}"
                    )
                await conn.execute(
                    SUBSCRIBE_TO_FORM_LIST,
                    (row.list_id, row.subscriber_id),
                )
                await conn.execute(
                    LIFT_SUPPRESSION,
                    (row.organization_id, email_hash(self.key, row.email), sorted(LIFTED_BY_CONSENT)),
                )
            return row
