"""Lists' SQL for the audience: fields, search, imports, segments, suppression, unsubscribe, forms, personal data."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row, dict_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.privacy import email_hash
from services.lists.fields import FieldDef
from services.lists.imports import field_defs
from services.lists.segments import Compiled
from services.lists.store import Recipient, Subscriber

SUBSCRIBER_COLUMNS = sql.SQL(
    "s.id, s.email, s.name, s.attributes::text AS attributes_json, s.status, s.hard_bounce_count,"
    " s.last_bounce_reason, s.created_at, s.updated_at"
)
IMPORT_COLUMNS = """
id, list_id, mode, state, encoding, delimiter, has_header, mapping, total_bytes, uploaded_bytes, bytes_done,
rows_done, rows_added, rows_updated, rows_skipped, rows_failed, error, file_name, created_at, finished_at
"""
EXPORT_PAGE = 2000
# The subscribers an import created, with what refers to them (found once, deleted in one statement).
ROLLBACK_CREATED = """
WITH doomed AS MATERIALIZED (
    SELECT id FROM subscribers WHERE organization_id = %(org)s AND created_by_import = %(job)s
), events AS (
    DELETE FROM subscriber_events WHERE subscriber_id IN (SELECT id FROM doomed)
), memberships AS (
    DELETE FROM list_subscriptions WHERE subscriber_id IN (SELECT id FROM doomed)
), consented AS (
    DELETE FROM consents WHERE subscriber_id IN (SELECT id FROM doomed)
)
DELETE FROM subscribers WHERE id IN (SELECT id FROM doomed)
"""


@dataclass(frozen=True)
class ConfirmationLimits:
    """How often one address may be sent a double opt-in confirmation, as of `now`."""

    now: datetime
    # One mail per address and form within this window; a repeat signup within it sends nothing.
    window: timedelta
    # At most this many per address and organisation in any 24 hours, whichever form asked.
    daily_cap: int


async def record_status(
    conn: AsyncConnection, subscriber_id: int, old: str | None, new: str, cause: str, detail: str = ""
) -> None:
    """Write one status change to the subscriber's history (every path that changes status calls this)."""
    await conn.execute(
        "INSERT INTO subscriber_events (subscriber_id, old_status, new_status, cause, detail)"
        " VALUES (%s, %s, %s, %s, %s)",
        (subscriber_id, old, new, cause, detail[:1000]),
    )


async def suppress(
    conn: AsyncConnection, key: bytes, organization_id: int, email: str, reason: str, source: str
) -> bool:
    """Put an address on the organisation's suppression list (kept as is when already there)."""
    cur = await conn.execute(
        "INSERT INTO suppressions (organization_id, email, email_hash, reason, source) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (organization_id, email_hash) DO NOTHING RETURNING id",
        (organization_id, email.strip().lower(), email_hash(key, email), reason, source[:200]),
    )
    return await cur.fetchone() is not None


@dataclass(frozen=True)
class SuppressionRow:
    """One suppressed address."""

    id: int
    email: str | None
    reason: str
    source: str
    created_at: Any


@dataclass(frozen=True)
class EventRow:
    """One status change."""

    old_status: str | None
    new_status: str
    cause: str
    detail: str
    occurred_at: Any


class AudienceStore:
    """The audience tables of the lists schema."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes) -> None:
        self.pool = pool
        self.key = internal_key

    # Fields

    async def defs(self, organization_id: int) -> dict[str, FieldDef]:
        """The organisation's custom fields by key."""
        async with self.pool.connection() as conn:
            return await field_defs(conn, organization_id)

    async def create_field(self, org: int, key: str, label: str, type_: str, options: list[str]) -> FieldDef:
        """Define a field; a key in use is refused."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO custom_fields (organization_id, key, label, type, options) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (org, key, label, type_, json.dumps(options, ensure_ascii=False)),
            )
            row = await cur.fetchone()
        if row is None:
            raise InvalidArgument("a field %(field)r exists already", field=key)
        return FieldDef(row[0], key, label, type_, tuple(options))

    async def delete_field(self, org: int, field_id: int) -> str:
        """Remove a field definition (values stay in attributes as free text); returns its key."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM custom_fields WHERE organization_id = %s AND id = %s RETURNING key", (org, field_id)
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("no field %(field)s in your organisation", field=field_id)
        return row[0]

    # Subscribers

    async def search(
        self, org: int, where: Compiled, after: int, limit: int, estimate: bool
    ) -> tuple[list[Subscriber], int]:
        """A page of matching subscribers by id, and the planner's estimate of all matches."""
        query = sql.SQL(
            "SELECT {} FROM subscribers s WHERE s.organization_id = %s AND s.id > %s AND {} ORDER BY s.id LIMIT %s"
        ).format(SUBSCRIBER_COLUMNS, where.where)
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Subscriber))
            await cur.execute(query, [org, after, *where.params, limit])
            page = await cur.fetchall()
            total = 0
            if estimate:
                plan_query = sql.SQL(
                    "EXPLAIN (FORMAT JSON) SELECT 1 FROM subscribers s WHERE s.organization_id = %s AND {}"
                ).format(where.where)
                cur2 = await conn.execute(plan_query, [org, *where.params])
                plan = (await cur2.fetchone())[0]
                total = int(plan[0]["Plan"]["Plan Rows"])
        return page, total

    async def count(self, org: int, where: Compiled) -> int:
        """Exact number of matches (a segment preview)."""
        query = sql.SQL("SELECT count(*) FROM subscribers s WHERE s.organization_id = %s AND {}").format(where.where)
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, [org, *where.params])
            return (await cur.fetchone())[0]

    async def update_subscriber(
        self, org: int, subscriber_id: int, name: str | None, attributes_json: str | None, status: str, reason: str
    ) -> Subscriber:
        """Change name, merge attributes, change status (recorded with its cause)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT status, email FROM subscribers WHERE organization_id = %s AND id = %s FOR UPDATE",
                (org, subscriber_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=subscriber_id)
            old, email = row
            if name is not None:
                await conn.execute(
                    "UPDATE subscribers SET name = %s, updated_at = now() WHERE id = %s", (name, subscriber_id)
                )
            if attributes_json is not None:
                data = json.loads(attributes_json)
                removed = [k for k, v in data.items() if v is None]
                kept = {k: v for k, v in data.items() if v is not None}
                await conn.execute(
                    "UPDATE subscribers SET attributes = (attributes - %s::text[]) || %s::jsonb, updated_at = now()"
                    " WHERE id = %s",
                    (removed, json.dumps(kept, ensure_ascii=False), subscriber_id),
                )
            if status and status != old:
                await conn.execute(
                    "UPDATE subscribers SET status = %s, updated_at = now() WHERE id = %s", (status, subscriber_id)
                )
                await record_status(conn, subscriber_id, old, status, "manual", reason)
                if status in ("unsubscribed", "complained"):
                    await suppress(conn, self.key, org, email, "manual", f"status set to {status}")
            cur = conn.cursor(row_factory=class_row(Subscriber))
            await cur.execute(
                sql.SQL("SELECT {} FROM subscribers s WHERE s.id = %s").format(SUBSCRIBER_COLUMNS), (subscriber_id,)
            )
            return await cur.fetchone()

    async def events(self, org: int, subscriber_id: int) -> list[EventRow]:
        """The subscriber's status history, oldest first."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(EventRow))
            await cur.execute(
                "SELECT e.old_status, e.new_status, e.cause, e.detail, e.occurred_at FROM subscriber_history e"
                " JOIN subscribers s ON s.id = e.subscriber_id WHERE s.organization_id = %s AND s.id = %s"
                " ORDER BY e.seq",
                (org, subscriber_id),
            )
            return await cur.fetchall()

    async def recipients_after(
        self, org: int, list_ids: Sequence[int], segments: Sequence[Compiled], after: int, limit: int
    ) -> list[Recipient]:
        """Active, unsuppressed subscribers on any of the lists or in any of the segments, by id."""
        targets: list[sql.Composable] = []
        params: list[Any] = [org, after]
        if list_ids:
            targets.append(
                sql.SQL(
                    "EXISTS (SELECT 1 FROM list_subscriptions ls WHERE ls.subscriber_id = s.id"
                    " AND ls.list_id = ANY(%s))"
                )
            )
            params.append(list(list_ids))
        for segment in segments:
            targets.append(segment.where)
            params.extend(segment.params)
        params.append(limit)
        query = sql.SQL(
            "SELECT s.id AS subscriber_id, s.email, s.name, s.attributes::text AS attributes_json"
            " FROM subscribers s WHERE s.organization_id = %s AND s.status = 'active' AND s.id > %s"
            " AND ({})"
            " AND NOT EXISTS (SELECT 1 FROM suppressions p WHERE p.organization_id = s.organization_id"
            " AND p.email = lower(s.email))"
            " ORDER BY s.id LIMIT %s"
        ).format(sql.SQL(" OR ").join(targets))
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Recipient))
            await cur.execute(query, params)
            return await cur.fetchall()

    async def export_rows(
        self, org: int, list_id: int, segment: Compiled | None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of a list's or a segment's subscribers, by id, each its own short query."""
        after = 0
        while True:
            params: list[Any] = [org, after]
            if segment is not None:
                where = segment.where
                params.extend(segment.params)
            else:
                where = sql.SQL(
                    "EXISTS (SELECT 1 FROM list_subscriptions ls WHERE ls.subscriber_id = s.id AND ls.list_id = %s)"
                )
                params.append(list_id)
            params.append(EXPORT_PAGE)
            query = sql.SQL(
                "SELECT s.id, s.email, s.name, s.status, s.attributes FROM subscribers s"
                " WHERE s.organization_id = %s AND s.id > %s AND {} ORDER BY s.id LIMIT %s"
            ).format(where)
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(query, params)
                rows = await cur.fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1]["id"]
            if len(rows) < EXPORT_PAGE:
                return

    # Imports

    async def create_import(
        self,
        org: int,
        list_id: int,
        mode: str,
        encoding: str,
        delimiter: str,
        header: int,
        mapping: dict,
        total_bytes: int,
        file_name: str,
    ) -> dict:
        """A new job waiting for its file."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # bandit B608: built only from this module's constant SQL; every value is a %s parameter
            await cur.execute(
                "INSERT INTO import_jobs (organization_id, list_id, mode, requested_encoding, requested_delimiter,"
                " header, requested_mapping, total_bytes, file_name) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING " + IMPORT_COLUMNS,  # nosec B608
                (org, list_id, mode, encoding, delimiter, header, json.dumps(mapping, ensure_ascii=False),
                 total_bytes, file_name),
            )  # fmt: skip
            return await cur.fetchone()

    async def get_import(self, org: int, job_id: int) -> dict:
        """One job of the organisation."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # bandit B608: built only from this module's constant SQL; every value is a %s parameter
            await cur.execute(
                "SELECT " + IMPORT_COLUMNS + " FROM import_jobs WHERE organization_id = %s AND id = %s",  # nosec B608
                (org, job_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound("no import %(job)s in your organisation", job=job_id)
        return row

    async def list_imports(self, org: int) -> list[dict]:
        """The organisation's last 100 jobs, newest first."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # bandit B608: built only from this module's constant SQL; every value is a %s parameter
            await cur.execute(
                "SELECT "
                + IMPORT_COLUMNS  # nosec B608
                + " FROM import_jobs WHERE organization_id = %s ORDER BY id DESC LIMIT 100",
                (org,),
            )
            return await cur.fetchall()

    async def upload_chunk(self, org: int, job_id: int, offset: int, data: bytes) -> dict:
        """Append a chunk at the end of what was uploaded; a chunk sent twice is ignored."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT state, uploaded_bytes FROM import_jobs WHERE organization_id = %s AND id = %s FOR UPDATE",
                (org, job_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("no import %(job)s in your organisation", job=job_id)
            state, uploaded = row
            if state != "uploading":
                raise FailedPrecondition(
                    "import %(job)s is %(state)s; chunks can only be added while uploading", job=job_id, state=state
                )
            if offset + len(data) <= uploaded:
                pass
            elif offset != uploaded:
                raise InvalidArgument(
                    "chunk at offset %(offset)s, but %(uploaded)s bytes are uploaded; send that offset",
                    offset=offset,
                    uploaded=uploaded,
                )
            else:
                await conn.execute(
                    'INSERT INTO import_chunks (job_id, "offset", data) VALUES (%s, %s, %s)', (job_id, offset, data)
                )
                await conn.execute(
                    "UPDATE import_jobs SET uploaded_bytes = %s, updated_at = now() WHERE id = %s",
                    (offset + len(data), job_id),
                )
        return await self.get_import(org, job_id)

    async def set_import_mapping(self, org: int, job_id: int, mapping: dict) -> None:
        """Replace the column mapping of a job still uploading (chosen once its columns were seen)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE import_jobs SET requested_mapping = %s, updated_at = now()"
                " WHERE organization_id = %s AND id = %s AND state = 'uploading' RETURNING id",
                (json.dumps(mapping, ensure_ascii=False), org, job_id),
            )
            changed = await cur.fetchone()
        if changed is None:
            job = await self.get_import(org, job_id)
            raise FailedPrecondition(
                "import %(job)s is %(state)s; its mapping can change only before it starts",
                job=job_id,
                state=job["state"],
            )

    async def set_import_starter(self, org: int, job_id: int, user_id: int, token_id: int, source_ip: str) -> None:
        """Remember who started the job, for the audit log's line when it ends."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE import_jobs SET started_by_user = %s, started_by_token = %s, started_from = %s"
                " WHERE organization_id = %s AND id = %s",
                (user_id, token_id, source_ip[:100], org, job_id),
            )

    async def import_outcome(self, job_id: int) -> dict | None:
        """A job's organisation, starter and final figures (for the audit log), or None."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT organization_id, list_id, state, rows_done, rows_added, rows_updated, rows_skipped,"
                " rows_failed, started_by_user, started_by_token, started_from FROM import_jobs WHERE id = %s",
                (job_id,),
            )
            return await cur.fetchone()

    async def set_import_state(self, org: int, job_id: int, allowed: tuple[str, ...], state: str) -> dict:
        """Move a job to `state` if it is in one of `allowed`."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE import_jobs SET state = %s, error = '', updated_at = now()"
                " WHERE organization_id = %s AND id = %s AND state = ANY(%s) RETURNING id",
                (state, org, job_id, list(allowed)),
            )
            changed = await cur.fetchone()
        job = await self.get_import(org, job_id)
        if changed is None:
            raise FailedPrecondition(
                "import %(job)s is %(state)s; it must be %(allowed)s",
                job=job_id,
                state=job["state"],
                allowed=" or ".join(allowed),
            )
        return job

    async def rollback_import(self, org: int, job_id: int) -> dict:
        """Undo a finished or failed job in one transaction (see imports module docstring)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT state, list_id FROM import_jobs WHERE organization_id = %s AND id = %s FOR UPDATE",
                (org, job_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("no import %(job)s in your organisation", job=job_id)
            if row[0] not in ("done", "failed"):
                raise FailedPrecondition(
                    "import %(job)s is %(state)s; only a done or failed import can be rolled back",
                    job=job_id,
                    state=row[0],
                )
            # Hold off a concurrent runner of the same job while undoing it.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mailblast-import'), %s::int)", (job_id,))
            await conn.execute(
                "UPDATE subscribers s SET name = c.previous_name, attributes = c.previous_attributes,"
                " import_job_id = c.previous_import_job, updated_at = now()"
                " FROM import_changes c WHERE c.job_id = %s AND s.id = c.subscriber_id",
                (job_id,),
            )
            # A job only ever subscribes to its own list.
            await conn.execute(
                "DELETE FROM list_subscriptions WHERE list_id = %s AND import_job_id = %s", (row[1], job_id)
            )
            # One pass over the organisation's subscribers finds those the job created (no index on the
            # mark: it would cost every imported row); their dependants go in the same statement.
            await conn.execute(ROLLBACK_CREATED, {"org": org, "job": job_id})
            await conn.execute("DELETE FROM import_changes WHERE job_id = %s", (job_id,))
            await conn.execute(
                "UPDATE import_jobs SET state = 'rolled_back', finished_at = now(), updated_at = now() WHERE id = %s",
                (job_id,),
            )
        return await self.get_import(org, job_id)

    async def import_errors(self, org: int, job_id: int) -> AsyncIterator[list[tuple[int, str, str, str | None]]]:
        """The job's bad rows in pages, by row number: (row, reason, raw, explanation JSON or None)."""
        await self.get_import(org, job_id)
        after = -1
        while True:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT row_number, reason, raw, explanation::text FROM import_errors"
                    " WHERE job_id = %s AND row_number > %s ORDER BY row_number LIMIT %s",
                    (job_id, after, EXPORT_PAGE),
                )
                rows = await cur.fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    # Segments

    async def create_segment(self, org: int, name: str, tree: dict) -> dict:
        """Save a segment."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "INSERT INTO segments (organization_id, name, conditions) VALUES (%s, %s, %s)"
                " RETURNING id, name, conditions, created_at, updated_at",
                (org, name, json.dumps(tree, ensure_ascii=False)),
            )
            return await cur.fetchone()

    async def segments(self, org: int, segment_ids: Sequence[int] | None = None) -> list[dict]:
        """The organisation's segments (or those asked for)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT id, name, conditions, created_at, updated_at FROM segments WHERE organization_id = %s"
                " AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[])) ORDER BY id",
                (
                    org,
                    None if segment_ids is None else list(segment_ids),
                    None if segment_ids is None else list(segment_ids),
                ),
            )
            return await cur.fetchall()

    async def update_segment(self, org: int, segment_id: int, name: str, tree: dict) -> dict:
        """Replace a segment's name and conditions."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "UPDATE segments SET name = %s, conditions = %s, updated_at = now()"
                " WHERE organization_id = %s AND id = %s"
                " RETURNING id, name, conditions, created_at, updated_at",
                (name, json.dumps(tree, ensure_ascii=False), org, segment_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound("no segment %(segment)s in your organisation", segment=segment_id)
        return row

    async def delete_segment(self, org: int, segment_id: int) -> None:
        """Remove a segment."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM segments WHERE organization_id = %s AND id = %s RETURNING id", (org, segment_id)
            )
            if await cur.fetchone() is None:
                raise NotFound("no segment %(segment)s in your organisation", segment=segment_id)

    # Suppression

    async def add_suppressions(self, org: int, emails: Sequence[str], reason: str, source: str) -> int:
        """Suppress addresses; return how many were new."""
        added = 0
        async with self.pool.connection() as conn, conn.transaction():
            for email in emails:
                added += await suppress(conn, self.key, org, email, reason, source)
        return added

    async def list_suppressions(
        self, org: int, contains: str, reason: str, after: int, limit: int
    ) -> list[SuppressionRow]:
        """A page of suppressions by id, filtered by address part and reason."""
        pattern = "%" + contains.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SuppressionRow))
            await cur.execute(
                "SELECT id, email, reason, source, created_at FROM suppressions WHERE organization_id = %s AND id > %s"
                " AND (%s = '%%' OR email LIKE %s) AND (%s = '' OR reason = %s) ORDER BY id LIMIT %s",
                (org, after, pattern, pattern, reason, reason, limit),
            )
            return await cur.fetchall()

    async def remove_suppression(self, org: int, email: str) -> int:
        """Take an address off the list (an erased subscriber's hash stays)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM suppressions WHERE organization_id = %s AND email_hash = %s AND reason <> 'erased'"
                " RETURNING id",
                (org, email_hash(self.key, email)),
            )
            return len(await cur.fetchall())

    async def check_suppressed(self, org: int, emails: Sequence[str]) -> dict[str, tuple[str, str, Any]]:
        """Which of the addresses are suppressed: hash -> (reason, source, created_at)."""
        hashes = [email_hash(self.key, e) for e in emails]
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT email_hash, reason, source, created_at FROM suppressions"
                " WHERE organization_id = %s AND email_hash = ANY(%s)",
                (org, hashes),
            )
            return {r[0]: (r[1], r[2], r[3]) for r in await cur.fetchall()}

    # Settings

    async def settings(self, org: int) -> dict:
        """The organisation's lists settings (defaults when never set)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT confirm_unsubscribe, sender_address, sender_name FROM organization_settings"
                " WHERE organization_id = %s",
                (org,),
            )
            row = await cur.fetchone()
        return row or {"confirm_unsubscribe": False, "sender_address": "", "sender_name": ""}

    async def update_settings(self, org: int, confirm: bool, address: str, name: str) -> dict:
        """Store the organisation's lists settings."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO organization_settings (organization_id, confirm_unsubscribe, sender_address, sender_name)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (organization_id) DO UPDATE SET"
                " confirm_unsubscribe = excluded.confirm_unsubscribe, sender_address = excluded.sender_address,"
                " sender_name = excluded.sender_name",
                (org, confirm, address, name),
            )
        return await self.settings(org)

    # Unsubscribe

    async def unsubscribe(
        self, org: int, subscriber_id: int, list_ids: Sequence[int], source: str
    ) -> tuple[list[int], str, str, str]:
        """Leave the lists (all when none given; then the address is unsubscribed and suppressed), committed."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT status, email, name FROM subscribers WHERE organization_id = %s AND id = %s FOR UPDATE",
                (org, subscriber_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("this unsubscribe link names nobody we hold")
            status, email, name = row
            cur = await conn.execute(
                "DELETE FROM list_subscriptions WHERE subscriber_id = %s AND (%s::bigint[] = '{}' OR list_id = ANY(%s))"
                " RETURNING list_id",
                (subscriber_id, list(list_ids), list(list_ids)),
            )
            left = sorted(r[0] for r in await cur.fetchall())
            cur = await conn.execute(
                "SELECT count(*) FROM list_subscriptions WHERE subscriber_id = %s", (subscriber_id,)
            )
            remaining = (await cur.fetchone())[0]
            if left:
                await record_status(conn, subscriber_id, status, status, "left_lists", f"{source}: {left}")
            if (not list_ids or remaining == 0) and status in ("active", "pending"):
                await conn.execute(
                    "UPDATE subscribers SET status = 'unsubscribed', updated_at = now() WHERE id = %s", (subscriber_id,)
                )
                await record_status(conn, subscriber_id, status, "unsubscribed", "unsubscribe", source)
                status = "unsubscribed"
            if not list_ids:
                await suppress(conn, self.key, org, email, "unsubscribed", source)
        return left, status, email, name

    async def subscriber_lists(self, org: int, subscriber_id: int) -> tuple[str, str, list[tuple[int, str, str]]]:
        """The subscriber's address, status and lists (id, name, description)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT email, status FROM subscribers WHERE organization_id = %s AND id = %s", (org, subscriber_id)
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("this unsubscribe link names nobody we hold")
            cur = await conn.execute(
                "SELECT l.id, l.name, l.description FROM list_subscriptions ls JOIN lists l ON l.id = ls.list_id"
                " WHERE ls.subscriber_id = %s ORDER BY l.id",
                (subscriber_id,),
            )
            return row[0], row[1], await cur.fetchall()

    # Forms and consent

    async def create_form(self, org: int, list_id: int, name: str, keys: list[str], ask_name: bool, redirect: str,
                          thanks: str) -> dict:  # fmt: skip
        """Save a signup form."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "INSERT INTO signup_forms (organization_id, list_id, name, field_keys, ask_name, redirect_url,"
                " thanks_text) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (org, list_id, name, json.dumps(keys), ask_name, redirect, thanks),
            )
            return await cur.fetchone()

    async def forms(self, org: int | None, form_id: int | None = None) -> list[dict]:
        """Forms of an organisation, or one form by id whatever its organisation (public signup)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT * FROM signup_forms WHERE (%s::bigint IS NULL OR organization_id = %s)"
                " AND (%s::bigint IS NULL OR id = %s) ORDER BY id",
                (org, org, form_id, form_id),
            )
            return await cur.fetchall()

    async def signup_allowed(self, source_ip: str, per_hour: int) -> bool:
        """Count this attempt; False when the address has tried more than `per_hour` times in the last hour."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mailblast-signup:' || %s))", (source_ip,))
            await conn.execute(
                "DELETE FROM signup_attempts WHERE source_ip = %s AND attempted_at < now() - interval '1 hour'",
                (source_ip,),
            )
            cur = await conn.execute("SELECT count(*) FROM signup_attempts WHERE source_ip = %s", (source_ip,))
            seen = (await cur.fetchone())[0]
            if seen >= per_hour:
                return False
            await conn.execute("INSERT INTO signup_attempts (source_ip) VALUES (%s)", (source_ip,))
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
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('mailblast-confirm:' || %s || ':' || %s))", (org, hashed)
            )
            await conn.execute(
                "DELETE FROM confirmation_mails WHERE organization_id = %s AND email_hash = %s AND sent_at <= %s",
                (org, hashed, now - timedelta(days=1)),
            )
            cur = await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE form_id = %s AND sent_at > %s)"
                " FROM confirmation_mails WHERE organization_id = %s AND email_hash = %s",
                (form_id, now - confirmation.window, org, hashed),
            )
            today, this_form = await cur.fetchone()
            if this_form or today >= confirmation.daily_cap:
                return None
            await conn.execute(
                "INSERT INTO confirmation_mails (organization_id, email_hash, form_id, sent_at)"
                " VALUES (%s, %s, %s, %s)",
                (org, hashed, form_id, now),
            )
            cur = await conn.execute(
                "INSERT INTO subscribers (organization_id, email, name, attributes, status)"
                " VALUES (%s, %s, %s, %s, 'pending')"
                " ON CONFLICT (organization_id, lower(email)) DO UPDATE SET updated_at = now()"
                " RETURNING id, (xmax = 0)",
                (org, email, name, attributes_json),
            )
            subscriber_id, inserted = await cur.fetchone()
            if inserted:
                await record_status(conn, subscriber_id, None, "pending", "signup", f"form {form_id}")
            await conn.execute(
                "INSERT INTO consents (subscriber_id, form_id, token_hash, source_ip, user_agent)"
                " VALUES (%s, %s, %s, %s, %s)",
                (subscriber_id, form_id, token_hash, ip[:100], agent[:500]),
            )
            await send(subscriber_id)
            return subscriber_id

    async def confirm_signup(self, token_hash: str, name: str, attributes_json: str | None) -> dict:
        """Confirm a consent: activate, subscribe to the form's list, lift an unsubscribe suppression."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT c.id AS consent_id, c.subscriber_id, c.confirmed_at, f.id AS form_id, f.list_id,"
                " f.organization_id, f.thanks_text, f.redirect_url, s.status, s.email"
                " FROM consents c JOIN signup_forms f ON f.id = c.form_id JOIN subscribers s ON s.id = c.subscriber_id"
                " WHERE c.token_hash = %s FOR UPDATE OF c, s",
                (token_hash,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("this confirmation link is not valid (or was already used and erased)")
            if row["confirmed_at"] is None:
                await conn.execute("UPDATE consents SET confirmed_at = now() WHERE id = %s", (row["consent_id"],))
                if row["status"] in ("pending", "unsubscribed"):
                    await conn.execute(
                        "UPDATE subscribers SET status = 'active', updated_at = now() WHERE id = %s",
                        (row["subscriber_id"],),
                    )
                    await record_status(
                        conn, row["subscriber_id"], row["status"], "active", "confirmed", f"form {row['form_id']}"
                    )
                await conn.execute(
                    "INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (row["list_id"], row["subscriber_id"]),
                )
                await conn.execute(
                    "DELETE FROM suppressions WHERE organization_id = %s AND email_hash = %s"
                    " AND reason IN ('unsubscribed', 'erased')",
                    (row["organization_id"], email_hash(self.key, row["email"])),
                )
            return row

    # Personal data

    async def personal_data(self, org: int, subscriber_id: int) -> dict:
        """Everything held about one subscriber."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT id, email, name, attributes, status, hard_bounce_count, last_bounce_reason, created_at,"
                " updated_at FROM subscribers WHERE organization_id = %s AND id = %s",
                (org, subscriber_id),
            )
            subscriber = await cur.fetchone()
            if subscriber is None:
                raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=subscriber_id)
            await cur.execute(
                "SELECT l.id, l.name, ls.created_at AS subscribed_at FROM list_subscriptions ls"
                " JOIN lists l ON l.id = ls.list_id WHERE ls.subscriber_id = %s ORDER BY l.id",
                (subscriber_id,),
            )
            lists = await cur.fetchall()
            await cur.execute(
                "SELECT old_status, new_status, cause, detail, occurred_at FROM subscriber_history"
                " WHERE subscriber_id = %s ORDER BY seq",
                (subscriber_id,),
            )
            events = await cur.fetchall()
            await cur.execute(
                "SELECT form_id, source_ip, user_agent, submitted_at, confirmed_at FROM consents"
                " WHERE subscriber_id = %s ORDER BY id",
                (subscriber_id,),
            )
            consents = await cur.fetchall()
            await cur.execute(
                "SELECT email, reason, source, created_at FROM suppressions WHERE organization_id = %s"
                " AND email_hash = %s",
                (org, email_hash(self.key, subscriber["email"])),
            )
            suppression = await cur.fetchall()
        return {
            "subscriber": subscriber,
            "lists": lists,
            "events": events,
            "consents": consents,
            "suppression": suppression,
        }

    async def erase(self, org: int, subscriber_id: int) -> str:
        """Delete every trace of the subscriber; keep only the keyed hash of the address as a suppression.

        The erasure is queued for the other services in the same transaction; returns the keyed hash.
        """
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT email FROM subscribers WHERE organization_id = %s AND id = %s FOR UPDATE", (org, subscriber_id)
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=subscriber_id)
            hashed = email_hash(self.key, row[0])
            for table in ("subscriber_events", "list_subscriptions", "consents", "import_changes"):
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE subscriber_id = %s").format(sql.Identifier(table)), (subscriber_id,)
                )
            await conn.execute("DELETE FROM subscribers WHERE id = %s", (subscriber_id,))
            # Rejected import rows quote the address; uploaded files are dropped once their job is done.
            pattern = "%" + row[0].lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            await conn.execute(
                "DELETE FROM import_errors WHERE job_id IN (SELECT id FROM import_jobs WHERE organization_id = %s)"
                " AND (lower(raw) LIKE %s OR lower(reason) LIKE %s OR lower(coalesce(explanation::text, '')) LIKE %s)",
                (org, pattern, pattern, pattern),
            )
            await conn.execute("DELETE FROM suppressions WHERE organization_id = %s AND email_hash = %s", (org, hashed))
            await conn.execute(
                "INSERT INTO suppressions (organization_id, email, email_hash, reason, source)"
                " VALUES (%s, NULL, %s, 'erased', 'erasure request')",
                (org, hashed),
            )
            await conn.execute(
                "INSERT INTO erasures (organization_id, subscriber_id, email_hash) VALUES (%s, %s, %s)",
                (org, subscriber_id, hashed),
            )
        return hashed
