"""The audience half of the ListsService servicer: fields, search, imports, segments, suppression, forms, privacy."""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import html
import io
import json
import secrets
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import events_pb2, lists_pb2
from nats.js import JetStreamContext

from services.common import mail
from services.common.audit import AuditTrail
from services.common.clock import Clock
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Problem, ServiceError
from services.common.identity import Principal, current_principal, require_scope, require_service
from services.common.log import get_logger
from services.common.privacy import email_hash
from services.common.rpc import caller_address
from services.common.spreadsheet import formula_safe_row
from services.common.verp import parse_unsubscribe_token
from services.lists import fields, segments, validation
from services.lists.audience import AudienceStore, ConfirmationLimits, SuppressionRow
from services.lists.erasures import ErasureAnnouncer
from services.lists.imports import ImportRunner
from services.lists.segments import Compiled

log = get_logger(__name__)

STATUS_NAMES = {
    lists_pb2.SUBSCRIBER_STATUS_ACTIVE: "active",
    lists_pb2.SUBSCRIBER_STATUS_UNSUBSCRIBED: "unsubscribed",
    lists_pb2.SUBSCRIBER_STATUS_ERROR_STOPPED: "error_stopped",
    lists_pb2.SUBSCRIBER_STATUS_COMPLAINED: "complained",
    lists_pb2.SUBSCRIBER_STATUS_DELETED: "deleted",
    lists_pb2.SUBSCRIBER_STATUS_PENDING: "pending",
}
STATUS_VALUES = {v: k for k, v in STATUS_NAMES.items()}
FIELD_TYPES = {
    lists_pb2.FIELD_TYPE_TEXT: "text",
    lists_pb2.FIELD_TYPE_NUMBER: "number",
    lists_pb2.FIELD_TYPE_DATE: "date",
    lists_pb2.FIELD_TYPE_CHOICE: "choice",
}
FIELD_TYPE_VALUES = {v: k for k, v in FIELD_TYPES.items()}
MODES = {
    lists_pb2.IMPORT_MODE_UNSPECIFIED: "add_and_update",
    lists_pb2.IMPORT_MODE_ADD_AND_UPDATE: "add_and_update",
    lists_pb2.IMPORT_MODE_ADD_ONLY: "add_only",
    lists_pb2.IMPORT_MODE_UPDATE_ONLY: "update_only",
}
MODE_VALUES = {"add_and_update": 1, "add_only": 2, "update_only": 3}
MAX_CHUNK_BYTES = 4 * 1024 * 1024
STREAM_BYTES = 256 * 1024
SUPPRESSION_REASONS = ("manual", "import")


class ResourceExhausted(ServiceError):
    """Too many attempts from one place; try again later."""

    code_name = "RESOURCE_EXHAUSTED"


def ts(value: datetime | None) -> Timestamp | None:
    """A protobuf timestamp, or None."""
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _token(after: int) -> str:
    return base64.urlsafe_b64encode(f"s:{after}".encode()).decode().rstrip("=")


def _read_token(token: str) -> int:
    if not token:
        return 0
    try:
        kind, after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split(":")
        if kind != "s":
            raise ValueError
        return int(after)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this service gave out; start again without it") from None


def _encode(text: str, encoding: str) -> bytes:
    if encoding in ("shift_jis", "sjis", "cp932"):
        return text.encode("cp932", "replace")
    return text.encode("utf-8")


def _encoding(requested: str) -> str:
    value = (requested or "utf-8").lower()
    if value not in ("utf-8", "utf8", "shift_jis", "sjis", "cp932"):
        raise InvalidArgument("encoding must be utf-8 or shift_jis")
    return value


async def _csv_stream(rows: AsyncIterator[Iterable[list[Any]]], header: list[str], encoding: str):
    """Yield FileChunks of CSV text encoded as asked (UTF-8 with a BOM so Excel reads it), formulas defused."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(formula_safe_row(header))
    prefix = b"\xef\xbb\xbf" if encoding.startswith("utf") else b""
    async for page in rows:
        for row in page:
            writer.writerow(formula_safe_row(row))
        if buf.tell() >= STREAM_BYTES:
            yield lists_pb2.FileChunk(data=prefix + _encode(buf.getvalue(), encoding))
            prefix = b""
            buf.seek(0)
            buf.truncate()
    yield lists_pb2.FileChunk(data=prefix + _encode(buf.getvalue(), encoding))


def _field(d: fields.FieldDef, created_at: datetime | None = None) -> lists_pb2.CustomField:
    return lists_pb2.CustomField(
        id=d.id,
        key=d.key,
        label=d.label,
        type=FIELD_TYPE_VALUES[d.type],
        options=list(d.options),
        created_at=ts(created_at),
    )


def _import(job: dict) -> lists_pb2.ImportJob:
    return lists_pb2.ImportJob(
        id=job["id"],
        list_id=job["list_id"],
        mode=MODE_VALUES[job["mode"]],
        state=job["state"],
        encoding=job["encoding"],
        delimiter=job["delimiter"],
        has_header=job["has_header"],
        mapping={str(k): str(v) for k, v in (job["mapping"] or {}).items()},
        total_bytes=job["total_bytes"],
        uploaded_bytes=job["uploaded_bytes"],
        bytes_done=job["bytes_done"],
        rows_done=job["rows_done"],
        rows_added=job["rows_added"],
        rows_updated=job["rows_updated"],
        rows_skipped=job["rows_skipped"],
        rows_failed=job["rows_failed"],
        error=job["error"],
        file_name=job["file_name"],
        created_at=ts(job["created_at"]),
        finished_at=ts(job["finished_at"]),
    )


def _segment(row: dict) -> lists_pb2.Segment:
    return lists_pb2.Segment(
        id=row["id"],
        name=row["name"],
        conditions_json=json.dumps(row["conditions"], ensure_ascii=False),
        created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
    )


def _suppression(row: SuppressionRow) -> lists_pb2.Suppression:
    return lists_pb2.Suppression(
        email=row.email or "", reason=row.reason, source=row.source, created_at=ts(row.created_at)
    )


def _form(row: dict) -> lists_pb2.SignupForm:
    return lists_pb2.SignupForm(
        id=row["id"],
        list_id=row["list_id"],
        name=row["name"],
        field_keys=list(row["field_keys"]),
        ask_name=row["ask_name"],
        redirect_url=row["redirect_url"],
        thanks_text=row["thanks_text"],
        created_at=ts(row["created_at"]),
    )


def _one_line(text: str, what: str, limit: int = 2000) -> str:
    if validation.has_control(text) or len(text) > limit:
        raise InvalidArgument("%(what)s must be one line of at most %(limit)s characters", what=what, limit=limit)
    return text


class AudienceRpcs:
    """RPCs of the audience: mixed into ListsServicer, which provides _own_list and _subscriber_pb."""

    audience: AudienceStore
    imports: ImportRunner
    js: JetStreamContext | None
    audit: AuditTrail
    erasures: ErasureAnnouncer | None
    internal_key: bytes
    public_url: str
    signup_rate_per_hour: int
    confirm_window: timedelta
    confirm_daily_cap: int
    # The time confirmation limits are counted in; tests move it.
    clock: Clock

    # Fields

    async def CreateField(self, request, context):
        """Define a typed custom field."""
        principal = require_scope("admin")
        try:
            key, label, type_, options = fields.check_definition(
                request.key, request.label, FIELD_TYPES.get(request.type, ""), list(request.options)
            )
        except ValueError as exc:
            raise InvalidArgument.of(exc) from None
        created = await self.audience.create_field(principal.organization_id, key, label, type_, options)
        await self.audit.record("field.created", f"field:{created.id}", {"key": key, "type": type_}, context=context)
        return _field(created, datetime.now(UTC))

    async def ListFields(self, request, context):
        """The organisation's custom fields."""
        principal = require_scope("read")
        defs = await self.audience.defs(principal.organization_id)
        return lists_pb2.ListFieldsResponse(fields=[_field(d) for d in sorted(defs.values(), key=lambda d: d.id)])

    async def DeleteField(self, request, context):
        """Remove a field definition."""
        principal = require_scope("admin")
        key = await self.audience.delete_field(principal.organization_id, request.field_id)
        await self.audit.record("field.deleted", f"field:{request.field_id}", {"key": key}, context=context)
        return lists_pb2.DeleteFieldResponse()

    async def check_field_values(self, organization_id: int, attributes_json: str) -> str:
        """Canonical attributes checked against the organisation's field definitions."""
        defs = await self.audience.defs(organization_id)
        return fields.check_values(defs, attributes_json)

    # Subscribers

    async def SearchSubscribers(self, request, context):
        """Filter, keyset-page and estimate the organisation's subscribers."""
        principal = require_scope("read")
        org = principal.organization_id
        size = min(request.page_size or 100, 1000)
        after = _read_token(request.page_token)
        conditions: list[dict] = []
        if request.email_prefix:
            conditions.append({"field": "email", "op": "starts_with", "value": request.email_prefix})
        if request.email_contains:
            conditions.append({"field": "email", "op": "contains", "value": request.email_contains})
        if request.name_contains:
            conditions.append({"field": "name", "op": "contains", "value": request.name_contains})
        if request.status:
            conditions.append({"field": "status", "op": "eq", "value": STATUS_NAMES.get(request.status, "?")})
        if request.list_id:
            await self._own_list(org, request.list_id)
            conditions.append({"field": "list", "op": "eq", "value": request.list_id})
        if bool(request.field_key) != bool(request.field_value):
            raise InvalidArgument("give both field_key and field_value, or neither")
        if request.field_key:
            conditions.append({"field": "custom", "key": request.field_key, "op": "eq", "value": request.field_value})
        defs = await self.audience.defs(org)
        if conditions:
            where = segments.compile_tree({"match": "all", "conditions": conditions}, defs)
        else:
            where = Compiled(segments.sql.SQL("TRUE"), [])
        found, total = await self.audience.search(org, where, after, size + 1, estimate=not after)
        page = found[:size]
        return lists_pb2.SearchSubscribersResponse(
            subscribers=[self._subscriber_pb(s) for s in page],
            next_page_token=_token(page[-1].id) if len(found) > size else "",
            total_estimate=total,
        )

    async def UpdateSubscriber(self, request, context):
        """Change a subscriber's name, fields or status."""
        principal = require_scope("send")
        name = attributes = None
        try:
            if request.HasField("name"):
                name = validation.check_name(request.name)
            if request.HasField("attributes_json"):
                raw = json.loads(request.attributes_json or "{}")
                if not isinstance(raw, dict):
                    raise Problem("attributes_json must be a JSON object")
                kept = {k: v for k, v in raw.items() if v is not None}
                checked = json.loads(
                    await self.check_field_values(
                        principal.organization_id, validation.check_attributes(json.dumps(kept))
                    )
                )
                attributes = json.dumps({**{k: None for k, v in raw.items() if v is None}, **checked})
        except ValueError as exc:
            raise InvalidArgument.of(exc) from None
        status = STATUS_NAMES.get(request.status, "") if request.status else ""
        if request.status and not status:
            raise InvalidArgument("unknown status")
        updated = await self.audience.update_subscriber(
            principal.organization_id, request.subscriber_id, name, attributes, status, request.reason[:500]
        )
        return self._subscriber_pb(updated)

    async def ListSubscriberEvents(self, request, context):
        """A subscriber's status history."""
        principal = require_scope("read")
        if await self._store.subscriber(principal.organization_id, request.subscriber_id) is None:
            raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=request.subscriber_id)
        events = await self.audience.events(principal.organization_id, request.subscriber_id)
        return lists_pb2.ListSubscriberEventsResponse(
            events=[
                lists_pb2.SubscriberEvent(
                    old_status=e.old_status or "",
                    new_status=e.new_status,
                    cause=e.cause,
                    detail=e.detail,
                    occurred_at=ts(e.occurred_at),
                )
                for e in events
            ]
        )

    # Imports

    async def CreateImport(self, request, context):
        """Open an import job; its file follows in UploadImportChunk calls."""
        principal = require_scope("send")
        await self._own_list(principal.organization_id, request.list_id)
        if request.encoding:
            try:
                segments_encoding = request.encoding.strip().lower()
                from services.lists.csvimport import ENCODINGS

                if segments_encoding not in ENCODINGS:
                    raise ValueError
            except ValueError:
                raise InvalidArgument(
                    "unknown encoding %(encoding)r: use utf-8 or shift_jis", encoding=request.encoding
                ) from None
        if len(request.delimiter) > 1 or request.header not in (0, 1, 2):
            raise InvalidArgument("delimiter is one character; header is 0 (detect), 1 (yes) or 2 (no)")
        job = await self.audience.create_import(
            principal.organization_id,
            request.list_id,
            MODES[request.mode],
            request.encoding,
            request.delimiter,
            request.header,
            dict(request.mapping),
            request.total_bytes,
            _one_line(request.file_name, "file_name", 300),
        )
        return _import(job)

    async def UploadImportChunk(self, request, context):
        """Append one piece of the file."""
        principal = require_scope("send")
        if len(request.data) > MAX_CHUNK_BYTES:
            raise InvalidArgument("send chunks of at most %(limit)s bytes", limit=MAX_CHUNK_BYTES)
        return _import(
            await self.audience.upload_chunk(principal.organization_id, request.import_id, request.offset, request.data)
        )

    async def StartImport(self, request, context):
        """Queue the uploaded file for the background runner."""
        principal = require_scope("send")
        if request.set_mapping:
            # The console shows the file's columns after the upload and sends the chosen mapping here.
            await self.audience.set_import_mapping(principal.organization_id, request.import_id, dict(request.mapping))
        job = await self.audience.set_import_state(
            principal.organization_id, request.import_id, ("uploading",), "queued"
        )
        await self._import_started("import.started", job, principal, context)
        return _import(job)

    async def _import_started(self, action: str, job: dict, principal: Principal, context) -> None:
        source_ip = caller_address(context)
        await self.audience.set_import_starter(
            principal.organization_id, job["id"], principal.user_id, principal.token_id, source_ip
        )
        detail = {"list_id": job["list_id"], "mode": job["mode"], "bytes": job["total_bytes"]}
        await self.audit.record(action, f"import:{job['id']}", detail, context=context)
        # Kicked only now, so the job's end is credited to whoever started it.
        self.imports.kick()

    async def import_finished(self, job_id: int) -> None:
        """Audit the end of a job the runner finished, for the user (or token) that started it."""
        job = await self.audience.import_outcome(job_id)
        if job is None:
            return
        starter = Principal(
            organization_id=job["organization_id"], user_id=job["started_by_user"], token_id=job["started_by_token"]
        )
        detail = {k: job[k] for k in ("list_id", "state", "rows_done", "rows_added", "rows_updated", "rows_skipped",
                                      "rows_failed")}  # fmt: skip
        await self.audit.record(
            "import.finished", f"import:{job_id}", detail, source_ip=job["started_from"], principal=starter
        )

    async def GetImport(self, request, context):
        """A job's progress."""
        principal = require_scope("read")
        return _import(await self.audience.get_import(principal.organization_id, request.import_id))

    async def ListImports(self, request, context):
        """The organisation's recent jobs."""
        principal = require_scope("read")
        return lists_pb2.ListImportsResponse(
            imports=[_import(j) for j in await self.audience.list_imports(principal.organization_id)]
        )

    async def ResumeImport(self, request, context):
        """Continue a failed job from its last committed chunk."""
        principal = require_scope("send")
        job = await self.audience.set_import_state(
            principal.organization_id, request.import_id, ("failed", "running"), "queued"
        )
        await self._import_started("import.resumed", job, principal, context)
        return _import(job)

    async def RollbackImport(self, request, context):
        """Undo what a job did."""
        principal = require_scope("send")
        job = await self.audience.rollback_import(principal.organization_id, request.import_id)
        await self.audit.record(
            "import.rolled_back", f"import:{job['id']}", {"list_id": job["list_id"]}, context=context
        )
        return _import(job)

    async def StreamImportErrors(self, request, context):
        """The bad rows as CSV: row, reason, raw."""
        principal = require_scope("read")
        pages = self.audience.import_errors(principal.organization_id, request.import_id)
        first = await anext(pages, None)
        # The rejected rows quote what the file said about people: an export like any other.
        await self.audit.record("import.errors_exported", f"import:{request.import_id}", context=context)

        async def rows():
            if first is not None:
                yield [row[:3] for row in first]
                async for page in pages:
                    yield [row[:3] for row in page]

        async for chunk in _csv_stream(rows(), ["row", "reason", "raw"], "utf-8"):
            yield chunk

    async def StreamImportErrorRows(self, request, context):
        """The bad rows in pages, with the explanation behind each reason."""
        principal = require_scope("read")
        await self.audience.get_import(principal.organization_id, request.import_id)
        await self.audit.record("import.errors_exported", f"import:{request.import_id}", context=context)
        async for page in self.audience.import_errors(principal.organization_id, request.import_id):
            yield lists_pb2.ImportErrorPage(
                rows=[
                    lists_pb2.ImportErrorRow(row_number=n, reason=reason, raw=raw, explanation_json=explained or "")
                    for n, reason, raw, explained in page
                ]
            )

    async def ExportSubscribers(self, request, context):
        """A list or a segment as CSV."""
        principal = require_scope("read")
        org = principal.organization_id
        encoding = _encoding(request.encoding)
        segment = None
        if request.segment_id:
            segment = (await self.compile_segments(org, [request.segment_id]))[0]
        elif request.list_id:
            await self._own_list(org, request.list_id)
        else:
            raise InvalidArgument("give a list_id or a segment_id")
        keys = sorted(d.key for d in (await self.audience.defs(org)).values())
        target = f"segment:{request.segment_id}" if request.segment_id else f"list:{request.list_id}"
        await self.audit.record("list.exported", target, {"encoding": encoding}, context=context)

        async def rows():
            async for page in self.audience.export_rows(org, request.list_id, segment):
                yield (
                    [r["email"], r["name"], r["status"], *(_cell(r["attributes"].get(k)) for k in keys)] for r in page
                )

        async for chunk in _csv_stream(rows(), ["email", "name", "status", *keys], encoding):
            yield chunk

    # Segments

    async def _check_tree(self, org: int, conditions_json: str) -> tuple[dict, Compiled]:
        tree = segments.parse(conditions_json)
        compiled = segments.compile_tree(tree, await self.audience.defs(org))
        if compiled.list_ids:
            missing = compiled.list_ids - await self._store.own_list_ids(org, sorted(compiled.list_ids))
            if missing:
                raise NotFound("no list %(list)s in your organisation", list=", ".join(map(str, sorted(missing))))
        return tree, compiled

    async def compile_segments(self, org: int, segment_ids: Iterable[int]) -> list[Compiled]:
        """Compile the organisation's saved segments; another organisation's ids are NOT_FOUND."""
        wanted = sorted(set(segment_ids))
        rows = await self.audience.segments(org, wanted)
        missing = set(wanted) - {r["id"] for r in rows}
        if missing:
            raise NotFound("no segment %(segment)s in your organisation", segment=", ".join(map(str, sorted(missing))))
        defs = await self.audience.defs(org)
        return [segments.compile_tree(r["conditions"], defs) for r in rows]

    async def CreateSegment(self, request, context):
        """Save a condition tree."""
        principal = require_scope("send")
        name = _one_line(request.name.strip(), "the segment name", 200)
        if not name:
            raise InvalidArgument("the segment name must not be empty")
        tree, _ = await self._check_tree(principal.organization_id, request.conditions_json)
        created = await self.audience.create_segment(principal.organization_id, name, tree)
        await self.audit.record("segment.created", f"segment:{created['id']}", {"name": name}, context=context)
        return _segment(created)

    async def GetSegment(self, request, context):
        """One segment."""
        principal = require_scope("read")
        found = await self.audience.segments(principal.organization_id, [request.segment_id])
        if not found:
            raise NotFound("no segment %(segment)s in your organisation", segment=request.segment_id)
        return _segment(found[0])

    async def ListSegments(self, request, context):
        """The organisation's segments."""
        principal = require_scope("read")
        return lists_pb2.ListSegmentsResponse(
            segments=[_segment(r) for r in await self.audience.segments(principal.organization_id)]
        )

    async def UpdateSegment(self, request, context):
        """Replace a segment."""
        principal = require_scope("send")
        name = _one_line(request.segment.name.strip(), "the segment name", 200)
        tree, _ = await self._check_tree(principal.organization_id, request.segment.conditions_json)
        updated = await self.audience.update_segment(principal.organization_id, request.segment_id, name, tree)
        await self.audit.record("segment.updated", f"segment:{request.segment_id}", {"name": name}, context=context)
        return _segment(updated)

    async def DeleteSegment(self, request, context):
        """Remove a segment."""
        principal = require_scope("send")
        await self.audience.delete_segment(principal.organization_id, request.segment_id)
        await self.audit.record("segment.deleted", f"segment:{request.segment_id}", context=context)
        return lists_pb2.DeleteSegmentResponse()

    async def PreviewSegment(self, request, context):
        """How many match, and a sample."""
        principal = require_scope("read")
        org = principal.organization_id
        if request.segment_id:
            compiled = (await self.compile_segments(org, [request.segment_id]))[0]
        else:
            _, compiled = await self._check_tree(org, request.conditions_json)
        sample, _ = await self.audience.search(org, compiled, 0, min(request.sample_size or 10, 100), estimate=False)
        return lists_pb2.PreviewSegmentResponse(
            count=await self.audience.count(org, compiled), sample=[self._subscriber_pb(s) for s in sample]
        )

    # Suppression

    async def AddSuppressions(self, request, context):
        """Suppress addresses by hand or from an import."""
        principal = require_scope("send")
        reason = request.reason or "manual"
        if reason not in SUPPRESSION_REASONS:
            raise InvalidArgument("reason must be manual or import")
        good, errors = [], []
        for index, email in enumerate(request.emails):
            try:
                good.append(validation.check_email(email.strip()))
            except ValueError as exc:
                errors.append(lists_pb2.RowError(index=index, email=email, message=str(exc)))
        source = _one_line(request.source or "console", "source", 200)
        added = await self.audience.add_suppressions(principal.organization_id, good, reason, source)
        # How many, never which: the addresses are personal data.
        detail = {"reason": reason, "source": source, "added": added}
        await self.audit.record(
            "suppression.added", f"organization:{principal.organization_id}", detail, context=context
        )
        return lists_pb2.AddSuppressionsResponse(added=added, errors=errors)

    async def ListSuppressions(self, request, context):
        """A page of the suppression list."""
        principal = require_scope("read")
        size = min(request.page_size or 100, 1000)
        found = await self.audience.list_suppressions(
            principal.organization_id, request.email_contains, request.reason, _read_token(request.page_token), size + 1
        )
        page = found[:size]
        return lists_pb2.ListSuppressionsResponse(
            suppressions=[_suppression(r) for r in page],
            next_page_token=_token(page[-1].id) if len(found) > size else "",
        )

    async def RemoveSuppression(self, request, context):
        """Take an address off the suppression list (admins only)."""
        principal = require_scope("admin")
        removed = await self.audience.remove_suppression(principal.organization_id, request.email)
        if not removed:
            raise NotFound("that address is not on your suppression list")
        log.info("suppression removed", organization_id=principal.organization_id, user_id=principal.user_id)
        hashed = email_hash(self.internal_key, request.email)
        await self.audit.record("suppression.removed", f"suppression:{hashed}", context=context)
        return lists_pb2.RemoveSuppressionResponse(removed=removed)

    async def ExportSuppressions(self, request, context):
        """The suppression list as CSV."""
        principal = require_scope("read")
        encoding = _encoding(request.encoding)
        await self.audit.record(
            "suppression.exported", f"organization:{principal.organization_id}", {"encoding": encoding},
            context=context,
        )  # fmt: skip

        async def rows():
            after = 0
            while True:
                page = await self.audience.list_suppressions(principal.organization_id, "", "", after, 2000)
                if not page:
                    return
                yield ([r.email or "(erased)", r.reason, r.source, r.created_at.isoformat()] for r in page)
                after = page[-1].id

        async for chunk in _csv_stream(rows(), ["email", "reason", "source", "created_at"], encoding):
            yield chunk

    async def CheckSuppressed(self, request, context):
        """Which addresses must not be sent to."""
        principal = current_principal()
        if not principal.service:
            principal = require_scope("read")
        if not principal.organization_id:
            raise InvalidArgument("the caller identity names no organisation")
        if len(request.emails) > 10_000:
            raise InvalidArgument("ask about at most 10000 addresses per call")
        found = await self.audience.check_suppressed(principal.organization_id, list(request.emails))
        out = []
        for email in request.emails:
            hit = found.get(email_hash(self.internal_key, email))
            if hit:
                out.append(lists_pb2.Suppression(email=email, reason=hit[0], source=hit[1], created_at=ts(hit[2])))
        return lists_pb2.CheckSuppressedResponse(suppressed=out)

    # Unsubscribe

    def _token_ref(self, token: str):
        ref = parse_unsubscribe_token(self.internal_key, token)
        if ref is None:
            raise NotFound("this unsubscribe link is not valid")
        return ref

    async def Unsubscribe(self, request, context):
        """Unsubscribe the token's subscriber, committed before this returns."""
        require_service()
        ref = self._token_ref(request.token)
        source = request.source or "page"
        if source not in ("one-click", "page"):
            raise InvalidArgument('source must be "one-click" or "page"')
        left, status, email, name = await self.audience.unsubscribe(
            ref.organization_id, ref.subscriber_id, list(request.list_ids), f"{source} campaign {ref.campaign_id}"
        )
        settings = await self.audience.settings(ref.organization_id)
        if settings["confirm_unsubscribe"] and self.js is not None:
            content = events_pb2.MessageContent(
                from_name=settings["sender_name"],
                from_address=settings["sender_address"],
                subject="配信停止を承りました / You have been unsubscribed",
                text_body="配信停止の手続きが完了しました。\nYou will no longer receive these emails.\n",
            )
            key = f"lists.unsubscribed.{ref.organization_id}.{ref.subscriber_id}.{ref.campaign_id}"
            await self._send_transactional(ref.organization_id, key, email, name, content, "lists.unsubscribed")
        log.info("unsubscribed", organization_id=ref.organization_id, subscriber_id=ref.subscriber_id, source=source)
        return lists_pb2.UnsubscribeResponse(left_list_ids=left, status=STATUS_VALUES.get(status, 0))

    async def GetUnsubscribePage(self, request, context):
        """The token's subscriber and lists, for the page that lets them choose."""
        require_service()
        ref = self._token_ref(request.token)
        email, status, lists = await self.audience.subscriber_lists(ref.organization_id, ref.subscriber_id)
        return lists_pb2.UnsubscribePage(
            email=email,
            status=STATUS_VALUES.get(status, 0),
            lists=[lists_pb2.MailingList(id=i, name=n, description=d) for i, n, d in lists],
        )

    async def GetSettings(self, request, context):
        """The organisation's lists settings."""
        principal = require_scope("read")
        return lists_pb2.ListsSettings(**await self.audience.settings(principal.organization_id))

    async def UpdateSettings(self, request, context):
        """Change the organisation's lists settings."""
        principal = require_scope("admin")
        address = request.sender_address.strip()
        if address:
            try:
                address = validation.check_sender_address(address)
            except ValueError as exc:
                raise InvalidArgument.of(exc) from None
        elif await self.audience.forms(principal.organization_id):
            raise FailedPrecondition(
                "the signup forms send their confirmation mail from the sender address: it cannot be empty "
                "while the organisation has forms"
            )
        elif request.confirm_unsubscribe:
            raise InvalidArgument("the unsubscribe confirmation mail needs a sender address: set one too")
        saved = await self.audience.update_settings(
            principal.organization_id,
            request.confirm_unsubscribe,
            address,
            _one_line(request.sender_name, "sender_name", 200),
        )
        await self.audit.record(
            "lists.settings_changed", f"organization:{principal.organization_id}", dict(saved), context=context
        )
        return lists_pb2.ListsSettings(**saved)

    # Forms

    async def CreateForm(self, request, context):
        """Save a signup form for a list."""
        principal = require_scope("send")
        org = principal.organization_id
        await self._own_list(org, request.list_id)
        if not (await self.audience.settings(org))["sender_address"]:
            # A form is live once saved: without a From its confirmation mail could never be sent.
            raise FailedPrecondition(
                "a signup form needs a sender address for its confirmation mail: set one in the list settings first"
            )
        defs = await self.audience.defs(org)
        unknown = [k for k in request.field_keys if k not in defs]
        if unknown:
            raise InvalidArgument("no custom field %(field)r in your organisation", field=unknown[0])
        redirect = request.redirect_url.strip()
        if redirect and not redirect.startswith(("https://", "http://")):
            raise InvalidArgument("redirect_url must be an http(s) URL")
        name = _one_line(request.name.strip() or "signup", "the form name", 200)
        created = await self.audience.create_form(
            org, request.list_id, name, list(request.field_keys), request.ask_name, _one_line(redirect, "redirect_url"),
            request.thanks_text[:2000],
        )  # fmt: skip
        detail = {"list_id": request.list_id, "name": name, "field_keys": list(request.field_keys)}
        await self.audit.record("form.created", f"form:{created['id']}", detail, context=context)
        return _form(created)

    async def ListForms(self, request, context):
        """The organisation's forms."""
        principal = require_scope("read")
        return lists_pb2.ListFormsResponse(
            forms=[_form(f) for f in await self.audience.forms(principal.organization_id)]
        )

    async def GetFormSnippet(self, request, context):
        """Embeddable HTML for a form."""
        principal = require_scope("read")
        found = await self.audience.forms(principal.organization_id, request.form_id)
        if not found:
            raise NotFound("no form %(form)s in your organisation", form=request.form_id)
        form = found[0]
        defs = await self.audience.defs(principal.organization_id)
        action = html.escape(f"{self.public_url.rstrip('/')}/f/{form['id']}", quote=True)
        parts = [f'<form method="post" action="{action}" accept-charset="UTF-8" class="mailblast-signup">']
        parts.append('<label>Email <input type="email" name="email" required></label>')
        if form["ask_name"]:
            parts.append('<label>Name <input type="text" name="name"></label>')
        for key in form["field_keys"]:
            d = defs.get(key)
            if d is None:
                continue
            label = html.escape(d.label)
            name = html.escape(f"field.{d.key}", quote=True)
            if d.type == "choice":
                options = "".join(
                    f'<option value="{html.escape(o, quote=True)}">{html.escape(o)}</option>' for o in d.options
                )
                parts.append(
                    f'<label>{label} <select name="{name}"><option value=""></option>{options}</select></label>'
                )
            else:
                kind = {"number": "number", "date": "date"}.get(d.type, "text")
                parts.append(f'<label>{label} <input type="{kind}" name="{name}"></label>')
        # People never see or fill this; robots that fill every field give themselves away.
        parts.append(
            '<div style="position:absolute;left:-5000px" aria-hidden="true">'
            '<input type="text" name="website" tabindex="-1" autocomplete="off"></div>'
        )
        parts.append('<button type="submit">Subscribe</button></form>')
        return lists_pb2.FormSnippet(html="\n".join(parts))

    async def GetPublicForm(self, request, context):
        """A form's name and fields for its hosted page; the form id names the organisation."""
        require_service()
        found = await self.audience.forms(None, request.form_id)
        if not found:
            raise NotFound("no form %(form)s", form=request.form_id)
        form = found[0]
        defs = await self.audience.defs(form["organization_id"])
        return lists_pb2.PublicForm(
            id=form["id"],
            name=form["name"],
            ask_name=form["ask_name"],
            fields=[_field(defs[k]) for k in form["field_keys"] if k in defs],
        )

    async def _send_transactional(
        self, org: int, key: str, to: str, name: str, content: events_pb2.MessageContent, category: str, variables=None
    ) -> None:
        message = events_pb2.TransactionalMessage(
            organization_id=org,
            message_key=key,
            to_address=to,
            to_name=name,
            content=content,
            variables_json=json.dumps(variables or {}, ensure_ascii=False),
            category=category,
            created_at=ts(datetime.now(UTC)),
        )
        assert self.js is not None
        await mail.send_transactional(self.js, message)

    async def SubmitSignup(self, request, context):
        """A signup from a public form: pending subscriber, consent, confirmation mail."""
        require_service()
        found = await self.audience.forms(None, request.form_id)
        if not found:
            raise NotFound("no form %(form)s", form=request.form_id)
        form = found[0]
        reply = lists_pb2.SubmitSignupResponse(
            accepted=True, thanks_text=form["thanks_text"], redirect_url=form["redirect_url"]
        )
        if request.honeypot:
            log.info("signup honeypot filled; ignored", form_id=form["id"])
            return reply
        if not await self.audience.signup_allowed(request.source_ip or "unknown", self.signup_rate_per_hour):
            raise ResourceExhausted("too many signups from this address; try again in an hour")
        org = form["organization_id"]
        settings = await self.audience.settings(org)
        if not settings["sender_address"]:
            # A form saved before forms needed a sender: refuse rather than thank for a mail never sent.
            log.warning("signup refused: no sender address for the confirmation mail", organization_id=org)
            raise FailedPrecondition("this form cannot take signups at the moment; please try again later")
        try:
            email = validation.check_email(request.email.strip())
            name = validation.check_name(request.name.strip()) if form["ask_name"] else ""
            asked = {k: v for k, v in request.fields.items() if k in form["field_keys"]}
            attributes = await self.check_field_values(org, validation.check_attributes(json.dumps(asked)))
        except ValueError as exc:
            raise InvalidArgument.of(exc) from None
        hit = (await self.audience.check_suppressed(org, [email])).get(email_hash(self.internal_key, email))
        if hit and hit[0] not in ("unsubscribed", "erased"):
            # Bounced or complained addresses are not taken back through a form, and a stranger must not
            # learn that an address is suppressed: the same thanks as any signup, and no mail.
            log.info("signup of a suppressed address; no mail", organization_id=org, form_id=form["id"])
            return reply
        token = secrets.token_urlsafe(24)
        link = f"{self.public_url.rstrip('/')}/c/{token}"
        content = events_pb2.MessageContent(
            from_name=settings["sender_name"],
            from_address=settings["sender_address"],
            subject="登録の確認 / Please confirm your subscription",
            text_body="以下のリンクから登録を確定してください。\nPlease confirm your subscription:\n{{confirm_url}}\n",
            html_body="<p>以下のリンクから登録を確定してください。<br>Please confirm your subscription:</p>"
            '<p><a href="{{confirm_url}}">{{confirm_url}}</a></p>',
        )

        async def send(subscriber_id: int) -> None:
            await self._send_transactional(
                org, f"lists.confirm.{form['id']}.{subscriber_id}.{_hash_token(token)[:16]}", email, name, content,
                "lists.confirm", {"confirm_url": link},
            )  # fmt: skip

        limits = ConfirmationLimits(self.clock.now(), self.confirm_window, self.confirm_daily_cap)
        subscriber_id = await self.audience.submit_signup(
            org, form["id"], email, name, attributes, _hash_token(token), request.source_ip[:100], request.user_agent,
            limits, send,
        )  # fmt: skip
        if subscriber_id is None:
            # The same answer as a signup that mailed: a stranger learns nothing about the address.
            log.info("confirmation mail held back by its limits", organization_id=org, form_id=form["id"])
            return reply
        log.info("signup awaiting confirmation", organization_id=org, form_id=form["id"], subscriber_id=subscriber_id)
        return reply

    async def ConfirmSignup(self, request, context):
        """The confirmation click: the subscriber becomes active on the form's list."""
        require_service()
        row = await self.audience.confirm_signup(_hash_token(request.token.strip()), "", None)
        return lists_pb2.ConfirmSignupResponse(
            list_id=row["list_id"], thanks_text=row["thanks_text"], redirect_url=row["redirect_url"]
        )

    # Personal data

    async def ExportSubscriberData(self, request, context):
        """Everything held about a subscriber, as JSON."""
        principal = require_scope("admin")
        data = await self.audience.personal_data(principal.organization_id, request.subscriber_id)
        await self.audit.record("subscriber.data_exported", f"subscriber:{request.subscriber_id}", context=context)
        return lists_pb2.ExportSubscriberDataResponse(
            json=json.dumps(data, ensure_ascii=False, default=_json_default, indent=2)
        )

    async def EraseSubscriber(self, request, context):
        """Delete every trace of a subscriber but a keyed hash on the suppression list."""
        principal: Principal = require_scope("admin")
        hashed = await self.audience.erase(principal.organization_id, request.subscriber_id)
        log.info("subscriber erased", organization_id=principal.organization_id, subscriber_id=request.subscriber_id)
        await self.audit.record(
            "subscriber.erased", f"subscriber:{request.subscriber_id}", {"email_hash": hashed}, context=context
        )
        if self.erasures is not None:
            # Committed with the erasure; announced now, or by the background retry if NATS is away.
            try:
                await self.erasures.publish_pending()
            except Exception:
                log.exception(
                    "erasure not announced yet; the background retry will", subscriber_id=request.subscriber_id
                )
                self.erasures.kick()
        return lists_pb2.EraseSubscriberResponse()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
