"""Lists' SQL for import jobs as people see them: create, upload, start, progress, errors, rollback.

The job's run (reading the file, writing subscribers) is the ImportRunner's, in imports.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.lists.imports import SAMPLE_BYTES

IMPORT_COLUMNS = """
id, list_id, mode, state, encoding, delimiter, has_header, mapping, total_bytes, uploaded_bytes, bytes_done,
rows_done, rows_added, rows_updated, rows_skipped, rows_failed, error, file_name, created_at, finished_at
"""
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
INSERT_JOB = f"""
INSERT INTO import_jobs (organization_id, list_id, mode, requested_encoding, requested_delimiter, header,
                         requested_mapping, total_bytes, file_name)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {IMPORT_COLUMNS}
"""  # nosec B608
SELECT_JOB = f"SELECT {IMPORT_COLUMNS} FROM import_jobs WHERE organization_id = %s AND id = %s"  # nosec B608
SELECT_RECENT = f"SELECT {IMPORT_COLUMNS} FROM import_jobs WHERE organization_id = %s ORDER BY id DESC LIMIT 100"  # nosec B608
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
SELECT_SAMPLE = """
SELECT "offset", data FROM import_chunks WHERE job_id = %s AND "offset" < %s ORDER BY "offset"
"""
SELECT_REQUESTED = """
SELECT state, requested_encoding, requested_delimiter, header, uploaded_bytes FROM import_jobs
WHERE organization_id = %s AND id = %s
"""
SET_HEADER = "UPDATE import_jobs SET header = %s, updated_at = now() WHERE id = %s AND state = 'uploading'"


LOCK_UPLOAD = """
SELECT state, uploaded_bytes FROM import_jobs WHERE organization_id = %s AND id = %s FOR UPDATE
"""
INSERT_CHUNK = """
INSERT INTO import_chunks (job_id, "offset", data) VALUES (%s, %s, %s)
"""
ADVANCE_UPLOAD = """
UPDATE import_jobs SET uploaded_bytes = %s, updated_at = now() WHERE id = %s
"""
SET_MAPPING = """
UPDATE import_jobs SET requested_mapping = %s, updated_at = now() WHERE organization_id = %s AND id = %s AND
state = 'uploading' RETURNING id
"""
SET_STARTER = """
UPDATE import_jobs SET started_by_user = %s, started_by_token = %s, started_from = %s WHERE organization_id =
%s AND id = %s
"""
SELECT_OUTCOME = """
SELECT organization_id, list_id, state, rows_done, rows_added, rows_updated, rows_skipped, rows_failed,
started_by_user, started_by_token, started_from FROM import_jobs WHERE id = %s
"""
SET_STATE = """
UPDATE import_jobs SET state = %s, error = '', updated_at = now() WHERE organization_id = %s AND id = %s AND
state = ANY(%s) RETURNING id
"""
LOCK_JOB = """
SELECT state, list_id FROM import_jobs WHERE organization_id = %s AND id = %s FOR UPDATE
"""
LOCK_JOB_RUN = """
SELECT pg_advisory_xact_lock(hashtext('mailblast-import'), %s::int)
"""
RESTORE_OVERWRITTEN = """
UPDATE subscribers s SET name = c.previous_name, attributes = c.previous_attributes, import_job_id =
c.previous_import_job, updated_at = now() FROM import_changes c WHERE c.job_id = %s AND s.id = c.subscriber_id
"""
DELETE_JOB_SUBSCRIPTIONS = """
DELETE FROM list_subscriptions WHERE list_id = %s AND import_job_id = %s
"""
DELETE_JOB_CHANGES = """
DELETE FROM import_changes WHERE job_id = %s
"""
SET_ROLLED_BACK = """
UPDATE import_jobs SET state = 'rolled_back', finished_at = now(), updated_at = now() WHERE id = %s
"""
SELECT_ERRORS = """
SELECT row_number, reason, raw, explanation::text FROM import_errors WHERE job_id = %s AND row_number > %s
ORDER BY row_number LIMIT %s
"""


@dataclass(frozen=True)
class ImportJobRow:
    """One import job and its progress."""

    id: int
    list_id: int
    mode: str
    state: str
    encoding: str
    delimiter: str
    has_header: bool
    mapping: dict | None
    total_bytes: int
    uploaded_bytes: int
    bytes_done: int
    rows_done: int
    rows_added: int
    rows_updated: int
    rows_skipped: int
    rows_failed: int
    error: str
    file_name: str
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class ImportOutcome:
    """A finished job's organisation, starter and figures, for the audit log."""

    organization_id: int
    list_id: int
    state: str
    rows_done: int
    rows_added: int
    rows_updated: int
    rows_skipped: int
    rows_failed: int
    started_by_user: int | None
    started_by_token: int | None
    started_from: str | None


@dataclass(frozen=True)
class ImportSample:
    """The start of a job's file and how the job was asked to read it."""

    state: str
    requested_encoding: str
    requested_delimiter: str
    header: int
    data: bytes
    # The bytes are the whole file.
    complete: bool


class ImportStore:
    """The import_jobs table and its chunks and errors, as the RPCs see them."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def create(
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
    ) -> ImportJobRow:
        """A new job waiting for its file."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ImportJobRow))
            await cur.execute(
                INSERT_JOB,
                (org, list_id, mode, encoding, delimiter, header, json.dumps(mapping, ensure_ascii=False),
                 total_bytes, file_name),
            )  # fmt: skip
            return await cur.fetchone()

    async def get(self, org: int, job_id: int) -> ImportJobRow:
        """One job of the organisation."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ImportJobRow))
            await cur.execute(SELECT_JOB, (org, job_id))
            row = await cur.fetchone()
        if row is None:
            raise NotFound("no import %(job)s in your organisation", job=job_id)
        return row

    async def recent(self, org: int) -> list[ImportJobRow]:
        """The organisation's last 100 jobs, newest first."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ImportJobRow))
            await cur.execute(
                SELECT_RECENT,
                (org,),
            )
            return await cur.fetchall()

    async def upload_chunk(self, org: int, job_id: int, offset: int, data: bytes) -> ImportJobRow:
        """Append a chunk at the end of what was uploaded; a chunk sent twice is ignored."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                LOCK_UPLOAD,
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
                await conn.execute(INSERT_CHUNK, (job_id, offset, data))
                await conn.execute(
                    ADVANCE_UPLOAD,
                    (offset + len(data), job_id),
                )
        return await self.get(org, job_id)

    async def set_mapping(self, org: int, job_id: int, mapping: dict) -> None:
        """Replace the column mapping of a job still uploading (chosen once its columns were seen)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                SET_MAPPING,
                (json.dumps(mapping, ensure_ascii=False), org, job_id),
            )
            changed = await cur.fetchone()
        if changed is None:
            job = await self.get(org, job_id)
            raise FailedPrecondition(
                "import %(job)s is %(state)s; its mapping can change only before it starts",
                job=job_id,
                state=job.state,
            )

    async def set_starter(self, org: int, job_id: int, user_id: int, token_id: int, source_ip: str) -> None:
        """Remember who started the job, for the audit log's line when it ends."""
        async with self.pool.connection() as conn:
            await conn.execute(
                SET_STARTER,
                (user_id, token_id, source_ip[:100], org, job_id),
            )

    async def outcome(self, job_id: int) -> ImportOutcome | None:
        """A job's organisation, starter and final figures (for the audit log), or None."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(ImportOutcome))
            await cur.execute(
                SELECT_OUTCOME,
                (job_id,),
            )
            return await cur.fetchone()

    async def set_state(self, org: int, job_id: int, allowed: tuple[str, ...], state: str) -> ImportJobRow:
        """Move a job to `state` if it is in one of `allowed`."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                SET_STATE,
                (state, org, job_id, list(allowed)),
            )
            changed = await cur.fetchone()
        job = await self.get(org, job_id)
        if changed is None:
            raise FailedPrecondition(
                "import %(job)s is %(state)s; it must be %(allowed)s",
                job=job_id,
                state=job.state,
                allowed=" or ".join(allowed),
            )
        return job

    async def rollback(self, org: int, job_id: int) -> ImportJobRow:
        """Undo a finished or failed job in one transaction (see imports module docstring)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                LOCK_JOB,
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
            await conn.execute(LOCK_JOB_RUN, (job_id,))
            await conn.execute(
                RESTORE_OVERWRITTEN,
                (job_id,),
            )
            # A job only ever subscribes to its own list.
            await conn.execute(DELETE_JOB_SUBSCRIPTIONS, (row[1], job_id))
            # One pass over the organisation's subscribers finds those the job created (no index on the
            # mark: it would cost every imported row); their dependants go in the same statement.
            await conn.execute(ROLLBACK_CREATED, {"org": org, "job": job_id})
            await conn.execute(DELETE_JOB_CHANGES, (job_id,))
            await conn.execute(
                SET_ROLLED_BACK,
                (job_id,),
            )
        return await self.get(org, job_id)

    async def errors(self, org: int, job_id: int) -> AsyncIterator[list[tuple[int, str, str, str | None]]]:
        """The job's bad rows in pages, by row number: (row, reason, raw, explanation JSON or None)."""
        await self.get(org, job_id)
        after = -1
        while True:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    SELECT_ERRORS,
                    (job_id, after, EXPORT_PAGE),
                )
                rows = await cur.fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    async def sample(self, org: int, job_id: int) -> ImportSample:
        """The start of the job's uploaded file (what the runner decides how to read it by), with its requests."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(SELECT_REQUESTED, (org, job_id))
            row = await cur.fetchone()
            if row is None:
                raise NotFound("no import %(job)s in your organisation", job=job_id)
            state, encoding, delimiter, header, uploaded = row
            cur = await conn.execute(SELECT_SAMPLE, (job_id, SAMPLE_BYTES))
            data = b"".join(bytes(chunk) for _, chunk in await cur.fetchall())[:SAMPLE_BYTES]
        return ImportSample(state, encoding, delimiter, header, data, uploaded < SAMPLE_BYTES)

    async def fix_header(self, job_id: int, has_header: bool) -> None:
        """Keep a previewed header decision, so the run maps columns by the numbers the preview showed."""
        async with self.pool.connection() as conn:
            await conn.execute(SET_HEADER, (1 if has_header else 2, job_id))
