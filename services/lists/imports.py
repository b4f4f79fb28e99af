"""CSV import jobs: the background runner that reads an uploaded file in committed chunks.

The rows are split by address into STREAMS writer streams (csvimport.stream_of), each written on its own
connection so PostgreSQL works on two cores; the streams share no address, so they never wait on each
other's rows and each address's rows are applied in file order. Each stream's share of a chunk of rows
is one transaction: COPY into a staging table, upsert into subscribers, put them on the list, record
bad rows, and advance the stream's byte offset and row number (`import_streams`). A job killed half-way
therefore resumes each stream from its last committed chunk, losing and duplicating nothing; the job's
own bytes_done / rows_done trail the slowest stream. Chunks are parsed (in a worker process for big
files) one ahead of the chunks being written, and each stream commits its shares in file order.

The subscribers a job creates carry its id (`created_by_import`); their history's 'import' event is
that mark with the row's creation time (the `subscriber_history` view), not a row written per
subscriber.

Rollback (see `rollback`) deletes the subscribers the job created (those still marked with its id),
takes the job's list subscriptions away, and restores the name and custom fields the job overwrote to
their values before the job; status changes since (unsubscribes, bounces) are kept.

Longer than 400 lines because the runner is one piece of bookkeeping (streams, ordered commits, resume
offsets) that reads wrong split apart; what the RPCs do to jobs is store_imports.py's.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.common import metrics
from services.common.errors import Problem
from services.common.log import get_logger
from services.lists import csvimport
from services.lists.fields import FieldDef

log = get_logger(__name__)

SAMPLE_BYTES = 256 * 1024
IDLE_POLL_SECONDS = 5.0
# Files at least this big (left to read) are parsed in a worker process; smaller ones in a thread.
PROCESS_MIN_BYTES = 4 * 1024 * 1024
GIN_PENDING_KB = 64 * 1024

CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS import_stage (
    row_number bigint, email text, name text, attributes jsonb, email_hash text
) ON COMMIT DELETE ROWS
"""
REFUSE_SUPPRESSED = """
DELETE FROM import_stage st USING suppressions p
WHERE p.organization_id = %(org)s
  AND (p.email = lower(st.email) OR (st.email_hash IS NOT NULL AND p.email_hash = st.email_hash))
RETURNING st.row_number, st.email, p.reason
"""
# Rows are matched to subscribers by one index probe each (LATERAL ... LIMIT 1 keeps the planner from
# hashing the whole subscribers table, which grows with every chunk, for a chunk of a few thousand).
_EXISTING = """
CROSS JOIN LATERAL (
    SELECT id, name, attributes, import_job_id, created_by_import FROM subscribers
    WHERE organization_id = %(org)s AND lower(email) = lower(st.email) LIMIT 1
) s
"""
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
KEEP_PREVIOUS = (
    """
INSERT INTO import_changes (job_id, subscriber_id, previous_name, previous_attributes, previous_import_job)
SELECT %(job)s, s.id, s.name, s.attributes, s.import_job_id
FROM import_stage st"""
    + _EXISTING  # nosec B608
    + """
WHERE s.created_by_import IS DISTINCT FROM %(job)s
ON CONFLICT DO NOTHING
"""
)
# Within one job a later row of the same address merges into the earlier one whatever the mode.
_MERGE = """
SET name = CASE WHEN excluded.name <> '' THEN excluded.name ELSE subscribers.name END,
    attributes = subscribers.attributes || excluded.attributes,
    import_job_id = excluded.import_job_id, updated_at = now()
"""
UPSERT = {
    "add_and_update": "ON CONFLICT (organization_id, lower(email)) DO UPDATE" + _MERGE,
    "add_only": "ON CONFLICT (organization_id, lower(email)) DO UPDATE"
    + _MERGE
    + " WHERE subscribers.created_by_import = excluded.created_by_import",
}
INSERT_FROM_STAGE = """
WITH upserted AS (
    INSERT INTO subscribers (organization_id, email, name, attributes, created_by_import, import_job_id)
    SELECT %(org)s, email, name, attributes, %(job)s, %(job)s FROM import_stage
    {conflict}
    RETURNING id, (xmax = 0) AS inserted
), subscribed AS (
    INSERT INTO list_subscriptions (list_id, subscriber_id, import_job_id)
    SELECT %(list)s, id, %(job)s FROM upserted
    ON CONFLICT DO NOTHING
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
"""
UPDATE_FROM_STAGE = """
WITH updated AS (
    UPDATE subscribers s
    SET name = CASE WHEN st.name <> '' THEN st.name ELSE s.name END,
        attributes = s.attributes || st.attributes, import_job_id = %(job)s, updated_at = now()
    FROM import_stage st
    WHERE s.organization_id = %(org)s AND lower(s.email) = lower(st.email)
    RETURNING s.id
)
SELECT 0, count(*) FROM updated
"""
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SUBSCRIBE_FROM_STAGE = (
    """
INSERT INTO list_subscriptions (list_id, subscriber_id, import_job_id)
SELECT %(list)s, s.id, %(job)s
FROM import_stage st"""
    + _EXISTING  # nosec B608
    + """
ON CONFLICT DO NOTHING
"""
)
ADVANCE_STREAM = """
INSERT INTO import_streams (job_id, stream, bytes_done, rows_done) VALUES (%(job)s, %(stream)s, %(bytes)s, %(rows)s)
ON CONFLICT (job_id, stream) DO UPDATE SET bytes_done = excluded.bytes_done, rows_done = excluded.rows_done
"""
# The counters, and the job's progress as far as every stream has committed (the other stream's
# transaction may update the same row: it waits for this one's commit).
COUNT_JOB = """
UPDATE import_jobs
SET bytes_done = GREATEST(bytes_done, (SELECT min(bytes_done) FROM import_streams WHERE job_id = %(job)s)),
    rows_done = GREATEST(rows_done, (SELECT min(rows_done) FROM import_streams WHERE job_id = %(job)s)),
    rows_added = rows_added + %(added)s,
    rows_updated = rows_updated + %(updated)s, rows_skipped = rows_skipped + %(skipped)s,
    rows_failed = rows_failed + %(failed)s, updated_at = now()
WHERE id = %(job)s
"""
ADVANCE_JOB = "UPDATE import_jobs SET bytes_done = %s, rows_done = %s, updated_at = now() WHERE id = %s"
SELECT_STREAMS = "SELECT stream, bytes_done, rows_done FROM import_streams WHERE job_id = %s"
# Writer connections per job: the rows are split between them by address (see csvimport.stream_of).
STREAMS = 2
NEXT_CHUNK = """
SELECT "offset", data FROM import_chunks WHERE job_id = %s AND "offset" + length(data) > %s
ORDER BY "offset" LIMIT 1
"""
SELECT_JOB = """
SELECT organization_id, list_id, mode, state, requested_encoding, encoding, requested_delimiter, delimiter,
       header, has_header, requested_mapping, columns, bytes_done, rows_done, uploaded_bytes
FROM import_jobs WHERE id = %s
"""
CLEAN_GIN_PENDING = """
SELECT gin_clean_pending_list(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
WHERE i.indrelid = 'subscribers'::regclass AND a.amname = 'gin'
"""
SELECT_FIELDS = "SELECT id, key, label, type, options FROM custom_fields WHERE organization_id = %s"


@dataclass
class JobPlan:
    """How a job reads its file, fixed on its first run."""

    codec: str
    delimiter: str
    has_header: bool
    targets: list[str]


async def field_defs(conn: AsyncConnection, organization_id: int) -> dict[str, FieldDef]:
    """The organisation's custom fields by key."""
    cur = await conn.execute(SELECT_FIELDS, (organization_id,))
    return {r[1]: FieldDef(r[0], r[1], r[2], r[3], tuple(r[4])) for r in await cur.fetchall()}


async def _file_bytes(conn: AsyncConnection, job_id: int, start: int) -> AsyncIterator[bytes]:
    """The uploaded file from byte `start`, one stored chunk at a time."""
    position = start
    while True:
        cur = await conn.execute(NEXT_CHUNK, (job_id, position))
        row = await cur.fetchone()
        await conn.commit()
        if row is None:
            return
        offset, data = row
        data = bytes(data)
        yield data[position - offset :]
        position = offset + len(data)


async def _after(previous: asyncio.Future | None, step) -> None:
    """Run `step()` once `previous` has succeeded (its failure or cancellation passes on)."""
    if previous is not None:
        await previous
    await step()


class ImportRunner:
    """Runs queued import jobs, one at a time per process, each under an advisory lock."""

    def __init__(self, pool: AsyncConnectionPool, internal_key: bytes, batch_rows: int = 20000) -> None:
        # Told of each job that ended (done or failed), after its state is committed: the audit log.
        self.on_finished: Callable[[int], Awaitable[None]] | None = None
        self._pool = pool
        self._key = internal_key
        self.batch_rows = batch_rows
        self.process_min_bytes = PROCESS_MIN_BYTES
        self._kick = asyncio.Event()

    def kick(self) -> None:
        """Look for work now rather than at the next poll."""
        self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until `stop` is set."""
        while not stop.is_set():
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("import runner pass failed")
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=IDLE_POLL_SECONDS)

    async def run_once(self) -> int:
        """Run every queued job (and running ones no process holds); return how many were run."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT id FROM import_jobs WHERE state IN ('queued', 'running') ORDER BY id")
            ids = [r[0] for r in await cur.fetchall()]
        done = 0
        for job_id in ids:
            if await self.process(job_id):
                done += 1
        return done

    async def process(self, job_id: int) -> bool:
        """Run one job to its end if no other process holds it; False if it was held or not runnable."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext('mailblast-import'), %s::int)", (job_id,))
            row = await cur.fetchone()
            await conn.commit()
            if not row or not row[0]:
                return False
            try:
                return await self._process_locked(conn, job_id)
            finally:
                # A cancelled task leaves the connection mid-transaction; the pool discards it and the
                # session lock goes with it. Otherwise release it here.
                with contextlib.suppress(Exception):
                    if not conn.closed:
                        await conn.rollback()
                        await self._reset(conn)
                        await conn.execute(
                            "SELECT pg_advisory_unlock(hashtext('mailblast-import'), %s::int)", (job_id,)
                        )
                        await conn.commit()

    async def _process_locked(self, conn: AsyncConnection, job_id: int) -> bool:
        ran = await self._run_locked(conn, job_id)
        if ran and self.on_finished is not None:
            try:
                await self.on_finished(job_id)
            except Exception:
                log.exception("import end not reported", import_id=job_id)
        return ran

    async def _run_locked(self, conn: AsyncConnection, job_id: int) -> bool:
        cur = await conn.execute(SELECT_JOB, (job_id,))
        job = await cur.fetchone()
        if job is None or job[3] not in ("queued", "running"):
            await conn.commit()
            return False
        org, list_id, mode, _, req_enc, _, req_delim, _, header, _, req_map, columns, bytes_done, rows_done, size = job
        await conn.execute("UPDATE import_jobs SET state = 'running', updated_at = now() WHERE id = %s", (job_id,))
        await conn.commit()
        try:
            defs = await field_defs(conn, org)
            await conn.commit()
            if columns is None:
                plan = await self._plan(conn, job_id, req_enc, req_delim, header, req_map, defs)
            else:
                plan = JobPlan(columns["codec"], columns["delimiter"], columns["has_header"], columns["targets"])
            await self._read(conn, job_id, org, list_id, mode, plan, defs, bytes_done, rows_done, size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await conn.rollback()
            log.exception("import failed", import_id=job_id)
            await conn.execute(
                "UPDATE import_jobs SET state = 'failed', error = %s, updated_at = now() WHERE id = %s",
                (str(exc)[:1000], job_id),
            )
            await conn.commit()
            return True
        await conn.execute(
            "UPDATE import_jobs SET state = 'done', finished_at = now(), updated_at = now() WHERE id = %s", (job_id,)
        )
        # The file is personal data no longer needed once every row is in.
        await conn.execute("DELETE FROM import_chunks WHERE job_id = %s", (job_id,))
        await conn.commit()
        log.info("import done", import_id=job_id)
        return True

    async def _plan(
        self, conn: AsyncConnection, job_id: int, req_enc: str, req_delim: str, header: int, req_map: dict, defs
    ) -> JobPlan:
        sample = b""
        async for data in _file_bytes(conn, job_id, 0):
            sample += data
            if len(sample) >= SAMPLE_BYTES:
                break
        sample = sample[:SAMPLE_BYTES]
        layout = csvimport.read_layout(sample, len(sample) < SAMPLE_BYTES, req_enc, req_delim, header)
        codec, delimiter, has_header, head = layout.codec, layout.delimiter, layout.has_header, layout.header
        targets = csvimport.resolve_columns(head, layout.first_row, req_map, defs)
        plan = JobPlan(codec, delimiter, has_header, targets)
        names = head or [str(i + 1) for i in range(len(targets))]
        await conn.execute(
            "UPDATE import_jobs SET encoding = %s, delimiter = %s, has_header = %s, columns = %s, mapping = %s"
            " WHERE id = %s",
            (
                codec,
                delimiter,
                has_header,
                json.dumps({"codec": codec, "delimiter": delimiter, "has_header": has_header, "targets": targets}),
                json.dumps(dict(zip(names, targets, strict=False)), ensure_ascii=False),
                job_id,
            ),
        )
        await conn.commit()
        return plan

    async def _read(
        self, conn, job_id, org, list_id, mode, plan: JobPlan, defs, bytes_done: int, rows_done: int, size: int
    ) -> None:
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM suppressions WHERE organization_id = %s AND email IS NULL)", (org,)
        )
        row = await cur.fetchone()
        hash_key = self._key if row and row[0] else None
        await self._prepare(conn)
        cur = await conn.execute(SELECT_STREAMS, (job_id,))
        # A stream that never committed starts where the job's progress says.
        done = [(bytes_done, rows_done)] * STREAMS
        for stream, stream_bytes, stream_rows in await cur.fetchall():
            done[stream] = (stream_bytes, stream_rows)
        await conn.commit()
        async with self._pool.connection() as other, self._pool.connection() as reader:
            try:
                await self._prepare(other)
                await self._read_streams(
                    [conn, other], reader, job_id, org, list_id, mode, plan, defs, done, size, hash_key
                )
            finally:
                with contextlib.suppress(Exception):
                    if not other.closed:
                        await other.rollback()
                        await self._reset(other)
        # Searches read a pending list linearly: merge what this job left there before calling it done.
        try:
            async with conn.transaction():
                await conn.execute(CLEAN_GIN_PENDING)
        except psycopg.Error as exc:
            # Only the indexes' owner may; otherwise autovacuum merges them a little later.
            log.warning("could not merge the search indexes' pending entries", import_id=job_id, error=str(exc))

    @staticmethod
    async def _reset(conn: AsyncConnection) -> None:
        for setting in ("synchronous_commit", "gin_pending_list_limit", "work_mem", "maintenance_work_mem"):
            await conn.execute(f"RESET {setting}")
        await conn.commit()

    @staticmethod
    async def _prepare(conn: AsyncConnection) -> None:
        await conn.execute(CREATE_STAGE)
        # A commit lost in a crash takes the chunk's byte offset with it (same transaction), so the chunk
        # is simply read again on resume: waiting for each flush buys nothing here.
        await conn.execute("SET synchronous_commit = off")
        # Let the trigram indexes gather a chunk's entries and merge them in bulk rather than in many
        # small pending-list clean-ups.
        await conn.execute(f"SET gin_pending_list_limit = '{GIN_PENDING_KB}kB'")
        # ... and sort them in memory when merging (the final merge runs under maintenance_work_mem).
        await conn.execute(f"SET work_mem = '{GIN_PENDING_KB}kB'")
        await conn.execute(f"SET maintenance_work_mem = '{4 * GIN_PENDING_KB}kB'")
        await conn.commit()

    async def _read_streams(
        self, conns, reader, job_id, org, list_id, mode, plan: JobPlan, defs, done, size: int, hash_key
    ) -> None:
        bytes_done, rows_done = min(done)
        done_rows = tuple(rows for _, rows in done)
        pending = b""
        position = bytes_done
        number = rows_done
        batch: list[tuple[int, bytes]] = []
        batch_end = bytes_done
        skip_header = plan.has_header and rows_done == 0
        conn = conns[0]
        # Every stream's progress row exists before any commits, so the job's progress (their minimum) is
        # never ahead of a stream.
        async with conn.transaction():
            for stream, (stream_bytes, stream_rows) in enumerate(done):
                await conn.execute(
                    "INSERT INTO import_streams (job_id, stream, bytes_done, rows_done) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (job_id, stream, stream_bytes, stream_rows),
                )
        chunks = _file_bytes(reader, job_id, bytes_done)
        loop = asyncio.get_running_loop()
        # Parsing is CPU-bound Python: a big file gets a worker process (the second core) that parses the
        # next batch while this one's rows are written; a small one a thread, to spare the start-up.
        executor: concurrent.futures.Executor
        if size - bytes_done >= self.process_min_bytes:
            executor = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        else:
            executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="import-parse")
        # Batches are committed in file order, each with the offset after its last record.
        parsing: collections.deque[tuple[asyncio.Future, int, int]] = collections.deque()

        # Each stream commits its share of a batch on its own connection after its share of the batch
        # before; the streams share no address, so neither waits on the other's rows, and one may run a
        # batch ahead of the other.
        tails: list[asyncio.Future | None] = [None] * len(conns)
        inflight: set[asyncio.Future] = set()

        async def commit_oldest() -> None:
            nonlocal tails
            future, end, last_number = parsing.popleft()
            staged = await future
            previous = [t for t in tails if t is not None]
            tails = [
                asyncio.ensure_future(
                    _after(
                        tails[stream],
                        functools.partial(
                            self._commit_batch, c, job_id, org, list_id, mode, part, end, last_number, stream
                        ),
                    )
                )
                for stream, (c, part) in enumerate(zip(conns, staged, strict=True))
            ]
            inflight.update(tails)
            # At most one batch queued behind the one being written, per stream.
            for task in previous:
                await task

        async def flush(records: list[tuple[int, bytes]], end: int, last_number: int) -> None:
            future = loop.run_in_executor(
                executor,
                csvimport.parse_for_streams,
                records,
                plan.codec,
                plan.delimiter,
                plan.targets,
                defs,
                hash_key,
                done_rows,
            )
            parsing.append((future, end, last_number))
            if len(parsing) > 1:
                await commit_oldest()

        try:
            finished = False
            while not finished:
                data = await anext(chunks, None)
                finished = data is None
                buf = pending + (data or b"")
                records, used = csvimport.split_records(buf, final=finished)
                pending = buf[used:]
                base = position
                for record, end in records:
                    number += 1
                    batch_end = base + end
                    if skip_header:
                        skip_header = False
                        continue
                    batch.append((number, record))
                    if len(batch) >= self.batch_rows:
                        await flush(batch, batch_end, number)
                        batch = []
                position = base + used
            if batch or batch_end != bytes_done:
                await flush(batch, batch_end, number)
            while parsing:
                await commit_oldest()
            for task in tails:
                if task is not None:
                    await task
        finally:
            for future, _, _ in parsing:
                future.cancel()
            executor.shutdown(wait=False, cancel_futures=True)
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
        # Both streams are past the last batch: the job's progress says so exactly.
        async with conn.transaction():
            await conn.execute(ADVANCE_JOB, (batch_end, number, job_id))

    async def _commit_batch(
        self, conn, job_id, org, list_id, mode, staged: csvimport.StagedBatch, end: int, number: int, stream: int
    ) -> None:
        params = {"org": org, "job": job_id, "list": list_id}
        bad = list(staged.bad)
        added = updated = refused = 0
        async with conn.transaction():
            if staged.rows:
                async with conn.cursor().copy(
                    "COPY import_stage (row_number, email, name, attributes, email_hash) FROM STDIN"
                ) as copy:
                    await copy.write(staged.copy_data)
                cur = await conn.execute(REFUSE_SUPPRESSED, params)
                for row_number, email, reason in await cur.fetchall():
                    refused += 1
                    suppressed = Problem(
                        "%(address)s is on the suppression list (%(reason)s); not imported",
                        address=email,
                        reason=reason,
                    )
                    bad.append(csvimport.BadRow.of(row_number, suppressed, email))
                if mode != "add_only":
                    await conn.execute(KEEP_PREVIOUS, params)
                if mode == "update_only":
                    # Planned for the chunk's real size, the join probes subscribers rather than hashing them all.
                    await conn.execute("ANALYZE import_stage")
                    cur = await conn.execute(UPDATE_FROM_STAGE, params)
                else:
                    cur = await conn.execute(INSERT_FROM_STAGE.format(conflict=UPSERT[mode]), params)
                counts = await cur.fetchone()
                added, updated = counts or (0, 0)
                if mode != "add_and_update":
                    # Rows this mode left unchanged still join the list; add-and-update subscribed them above.
                    await conn.execute(SUBSCRIBE_FROM_STAGE, params)
            if bad:
                async with conn.cursor().copy(
                    "COPY import_errors (job_id, row_number, reason, raw, explanation) FROM STDIN"
                ) as copy:
                    for b in bad:
                        await copy.write_row((job_id, b.row_number, b.reason, b.raw, b.explanation))
            staged_rows = staged.rows - refused
            await conn.execute(ADVANCE_STREAM, {"job": job_id, "stream": stream, "bytes": end, "rows": number})
            await conn.execute(
                COUNT_JOB,
                {
                    "job": job_id,
                    "added": added,
                    "updated": updated,
                    "skipped": staged_rows - added - updated,
                    "failed": len(bad),
                },
            )
        # Committed: the counters follow the job's own.
        for result, rows in (("added", added), ("updated", updated), ("skipped", staged_rows - added - updated),
                             ("failed", len(bad))):  # fmt: skip
            metrics.IMPORT_ROWS.labels("lists", result).inc(rows)
