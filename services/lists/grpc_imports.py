"""The ListsImportsService servicer: CSV import jobs and CSV exports, protobuf in and out."""

from __future__ import annotations

import json
from typing import Any

from mailblast.v1 import lists_imports_pb2, lists_imports_pb2_grpc

from services.common.audit import AuditTrail
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.identity import Principal, require_scope
from services.common.rpc import caller_address
from services.lists import csvimport
from services.lists.grpc_convert import csv_stream, export_encoding, one_line, ts
from services.lists.grpc_segments import SavedSegments
from services.lists.imports import ImportRunner
from services.lists.store import ListsStore
from services.lists.store_fields import FieldStore
from services.lists.store_imports import ImportJobRow, ImportStore
from services.lists.store_subscribers import SubscriberStore

MAX_CHUNK_BYTES = 4 * 1024 * 1024
MODES = {
    lists_imports_pb2.IMPORT_MODE_UNSPECIFIED: "add_and_update",
    lists_imports_pb2.IMPORT_MODE_ADD_AND_UPDATE: "add_and_update",
    lists_imports_pb2.IMPORT_MODE_ADD_ONLY: "add_only",
    lists_imports_pb2.IMPORT_MODE_UPDATE_ONLY: "update_only",
}
MODE_VALUES = {"add_and_update": 1, "add_only": 2, "update_only": 3}
OUTCOME_FIGURES = ("list_id", "state", "rows_done", "rows_added", "rows_updated", "rows_skipped", "rows_failed")


def _import(job: ImportJobRow) -> lists_imports_pb2.ImportJob:
    return lists_imports_pb2.ImportJob(
        id=job.id,
        list_id=job.list_id,
        mode=MODE_VALUES[job.mode],
        state=job.state,
        encoding=job.encoding,
        delimiter=job.delimiter,
        has_header=job.has_header,
        mapping={str(k): str(v) for k, v in (job.mapping or {}).items()},
        total_bytes=job.total_bytes,
        uploaded_bytes=job.uploaded_bytes,
        bytes_done=job.bytes_done,
        rows_done=job.rows_done,
        rows_added=job.rows_added,
        rows_updated=job.rows_updated,
        rows_skipped=job.rows_skipped,
        rows_failed=job.rows_failed,
        error=job.error,
        file_name=job.file_name,
        created_at=ts(job.created_at),
        finished_at=ts(job.finished_at),
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class ImportsServicer(lists_imports_pb2_grpc.ListsImportsServiceServicer):
    """CSV import as a background job, and CSV export of a list or a segment."""

    def __init__(
        self, store: ImportStore, runner: ImportRunner, lists: ListsStore, fields: FieldStore,
        saved: SavedSegments, subscribers: SubscriberStore, audit: AuditTrail,
    ) -> None:  # fmt: skip
        self._store = store
        self._runner = runner
        self._lists = lists
        self._fields = fields
        self._saved = saved
        self._subscribers = subscribers
        self._audit = audit

    async def CreateImport(self, request, context):
        """Open an import job; its file follows in UploadImportChunk calls."""
        principal = require_scope("send")
        await self._lists.own_list(principal.organization_id, request.list_id)
        if request.encoding and request.encoding.strip().lower() not in csvimport.ENCODINGS:
            raise InvalidArgument("unknown encoding %(encoding)r: use utf-8 or shift_jis", encoding=request.encoding)
        if len(request.delimiter) > 1 or request.header not in (0, 1, 2):
            raise InvalidArgument("delimiter is one character; header is 0 (detect), 1 (yes) or 2 (no)")
        job = await self._store.create(
            principal.organization_id, request.list_id, MODES[request.mode], request.encoding, request.delimiter,
            request.header, dict(request.mapping), request.total_bytes, one_line(request.file_name, "file_name", 300),
        )  # fmt: skip
        return _import(job)

    async def UploadImportChunk(self, request, context):
        """Append one piece of the file."""
        principal = require_scope("send")
        if len(request.data) > MAX_CHUNK_BYTES:
            raise InvalidArgument("send chunks of at most %(limit)s bytes", limit=MAX_CHUNK_BYTES)
        return _import(
            await self._store.upload_chunk(principal.organization_id, request.import_id, request.offset, request.data)
        )

    async def PreviewImport(self, request, context):
        """How the job will read its file, and its columns; the header decision is kept for the run."""
        principal = require_scope("send")
        sample = await self._store.sample(principal.organization_id, request.import_id)
        if sample.state != "uploading":
            raise FailedPrecondition(
                "import %(job)s is %(state)s; it can be previewed only before it starts",
                job=request.import_id,
                state=sample.state,
            )
        try:
            layout = csvimport.read_layout(
                sample.data, sample.complete, sample.requested_encoding, sample.requested_delimiter, sample.header
            )
        except ValueError as exc:
            raise InvalidArgument.of(exc) from None
        # The console maps columns by number, so the run must agree on whether the first row is a header.
        await self._store.fix_header(request.import_id, layout.has_header)
        columns = csvimport.preview_columns(layout, await self._fields.defs(principal.organization_id))
        return lists_imports_pb2.ImportPreview(
            encoding=layout.codec,
            delimiter=layout.delimiter,
            has_header=layout.has_header,
            columns=[
                lists_imports_pb2.ImportColumn(number=c.number, first=c.first, second=c.second, target=c.target)
                for c in columns
            ],
        )

    async def StartImport(self, request, context):
        """Queue the uploaded file for the background runner."""
        principal = require_scope("send")
        if request.set_mapping:
            # The console shows the file's columns after the upload and sends the chosen mapping here.
            await self._store.set_mapping(principal.organization_id, request.import_id, dict(request.mapping))
        job = await self._store.set_state(principal.organization_id, request.import_id, ("uploading",), "queued")
        await self._import_started("import.started", job, principal, context)
        return _import(job)

    async def _import_started(self, action: str, job: ImportJobRow, principal: Principal, context) -> None:
        source_ip = caller_address(context)
        await self._store.set_starter(
            principal.organization_id, job.id, principal.user_id, principal.token_id, source_ip
        )
        detail = {"list_id": job.list_id, "mode": job.mode, "bytes": job.total_bytes}
        await self._audit.record(action, f"import:{job.id}", detail, context=context)
        # Kicked only now, so the job's end is credited to whoever started it.
        self._runner.kick()

    async def import_finished(self, job_id: int) -> None:
        """Audit the end of a job the runner finished, for the user (or token) that started it."""
        job = await self._store.outcome(job_id)
        if job is None:
            return
        starter = Principal(
            organization_id=job.organization_id, user_id=job.started_by_user, token_id=job.started_by_token
        )
        detail = {k: getattr(job, k) for k in OUTCOME_FIGURES}
        await self._audit.record(
            "import.finished", f"import:{job_id}", detail, source_ip=job.started_from, principal=starter
        )

    async def GetImport(self, request, context):
        """A job's progress."""
        principal = require_scope("read")
        return _import(await self._store.get(principal.organization_id, request.import_id))

    async def ListImports(self, request, context):
        """The organisation's recent jobs."""
        principal = require_scope("read")
        return lists_imports_pb2.ListImportsResponse(
            imports=[_import(j) for j in await self._store.recent(principal.organization_id)]
        )

    async def ResumeImport(self, request, context):
        """Continue a failed job from its last committed chunk."""
        principal = require_scope("send")
        job = await self._store.set_state(principal.organization_id, request.import_id, ("failed", "running"), "queued")
        await self._import_started("import.resumed", job, principal, context)
        return _import(job)

    async def RollbackImport(self, request, context):
        """Undo what a job did."""
        principal = require_scope("send")
        job = await self._store.rollback(principal.organization_id, request.import_id)
        await self._audit.record("import.rolled_back", f"import:{job.id}", {"list_id": job.list_id}, context=context)
        return _import(job)

    async def StreamImportErrors(self, request, context):
        """The bad rows as CSV: row, reason, raw."""
        principal = require_scope("read")
        pages = self._store.errors(principal.organization_id, request.import_id)
        first = await anext(pages, None)
        # The rejected rows quote what the file said about people: an export like any other.
        await self._audit.record("import.errors_exported", f"import:{request.import_id}", context=context)

        async def rows():
            if first is not None:
                yield [row[:3] for row in first]
                async for page in pages:
                    yield [row[:3] for row in page]

        async for chunk in csv_stream(rows(), ["row", "reason", "raw"], "utf-8"):
            yield chunk

    async def StreamImportErrorRows(self, request, context):
        """The bad rows in pages, with the explanation behind each reason."""
        principal = require_scope("read")
        await self._store.get(principal.organization_id, request.import_id)
        await self._audit.record("import.errors_exported", f"import:{request.import_id}", context=context)
        async for page in self._store.errors(principal.organization_id, request.import_id):
            yield lists_imports_pb2.ImportErrorPage(
                rows=[
                    lists_imports_pb2.ImportErrorRow(
                        row_number=n, reason=reason, raw=raw, explanation_json=explained or ""
                    )
                    for n, reason, raw, explained in page
                ]
            )

    async def ExportSubscribers(self, request, context):
        """A list or a segment as CSV."""
        principal = require_scope("read")
        org = principal.organization_id
        encoding = export_encoding(request.encoding)
        segment = None
        if request.segment_id:
            segment = (await self._saved.compiled(org, [request.segment_id]))[0]
        elif request.list_id:
            await self._lists.own_list(org, request.list_id)
        else:
            raise InvalidArgument("give a list_id or a segment_id")
        keys = sorted(d.key for d in (await self._fields.defs(org)).values())
        target = f"segment:{request.segment_id}" if request.segment_id else f"list:{request.list_id}"
        await self._audit.record("list.exported", target, {"encoding": encoding}, context=context)

        async def rows():
            async for page in self._subscribers.export_rows(org, request.list_id, segment):
                yield ([r.email, r.name, r.status, *(_cell(r.attributes.get(k)) for k in keys)] for r in page)

        async for chunk in csv_stream(rows(), ["email", "name", "status", *keys], encoding):
            yield chunk
