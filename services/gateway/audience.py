"""Audience pages: custom fields, imports with options and mapping, exports, subscribers, segments,
suppression, signup forms and the organisation's lists settings."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import gettext as _
from mailblast.v1 import (
    lists_fields_pb2,
    lists_imports_pb2,
    lists_pb2,
    lists_privacy_pb2,
    lists_segments_pb2,
    lists_signup_pb2,
    lists_suppression_pb2,
)

from services.common.spreadsheet import formula_safe_row
from services.gateway.clients import SUBSCRIBER_STATUSES, BackendError, backends, call, stream
from services.gateway.explanations import explain_json
from services.gateway.mail import UPLOAD_CHUNK
from services.gateway.security import requires

bp = Blueprint("audience", __name__)

_FORM_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)
FIELD_TYPES = {
    "text": lists_fields_pb2.FIELD_TYPE_TEXT,
    "number": lists_fields_pb2.FIELD_TYPE_NUMBER,
    "date": lists_fields_pb2.FIELD_TYPE_DATE,
    "choice": lists_fields_pb2.FIELD_TYPE_CHOICE,
}
FIELD_TYPE_NAMES = {v: k for k, v in FIELD_TYPES.items()}
IMPORT_MODES = {
    "add_and_update": lists_imports_pb2.IMPORT_MODE_ADD_AND_UPDATE,
    "add_only": lists_imports_pb2.IMPORT_MODE_ADD_ONLY,
    "update_only": lists_imports_pb2.IMPORT_MODE_UPDATE_ONLY,
}
# What the encoding menu offers, and what lists calls them ("" lets lists detect it).
IMPORT_ENCODINGS = {"auto": "", "utf-8": "utf-8", "shift_jis": "cp932"}
EXPORT_ENCODINGS = ("utf-8", "shift_jis")
STATUS_VALUES = {v: k for k, v in SUBSCRIBER_STATUSES.items()}
EMAIL_HEADERS = {"email", "e-mail", "mail", "メールアドレス", "メール", "アドレス"}
NAME_HEADERS = {"name", "名前", "氏名", "お名前"}
_LOOKS_LIKE_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SAMPLE_BYTES = 64 * 1024


def _refused(exc: BackendError) -> None:
    if exc.code not in _FORM_ERRORS:
        raise exc
    flash(_("Refused: %(reason)s", reason=exc.message), "error")


def _fields() -> list[lists_fields_pb2.CustomField]:
    return list(call(backends().lists_fields.ListFields, lists_fields_pb2.ListFieldsRequest()).fields)


def _opened(method: Callable, message: Any) -> Iterator:
    """A server-streaming RPC's items; a refusal before the first one is raised here, as a BackendError."""
    items: Iterator = stream(method, message)
    try:
        first = next(items, None)
    except grpc.RpcError as exc:
        raise BackendError.from_rpc(exc) from None
    return itertools.chain([first] if first is not None else [], items)


def _attachment(body: Iterator[bytes], filename: str, mimetype: str) -> Response:
    response = Response(stream_with_context(body), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _download(method: Callable, message: Any, filename: str, mimetype: str) -> Response:
    """Stream a FileChunk RPC to the browser; a refusal before the first chunk is an ordinary error page."""
    chunks = _opened(method, message)
    return _attachment((chunk.data for chunk in chunks), filename, mimetype)


# --------------------------------------------------------------------------------------------- fields


@bp.get("/fields")
@requires("read")
def fields() -> str:
    """The organisation's custom fields, and the form to add one."""
    return render_template("fields.html", fields=_fields(), types=FIELD_TYPE_NAMES)


@bp.post("/fields")
@requires("admin")
def create_field() -> Response:
    """Define a typed field; a choice field takes its options one per line."""
    options = [o.strip() for o in request.form.get("options", "").splitlines() if o.strip()]
    try:
        call(
            backends().lists_fields.CreateField,
            lists_fields_pb2.CreateFieldRequest(
                key=request.form.get("key", "").strip(),
                label=request.form.get("label", "").strip(),
                type=FIELD_TYPES.get(request.form.get("type", ""), 0),
                options=options,
            ),
        )
    except BackendError as exc:
        _refused(exc)
    else:
        flash(_("The field was added."), "info")
    return redirect(url_for("audience.fields"))


@bp.post("/fields/<id:field_id>/delete")
@requires("admin")
def delete_field(field_id: int) -> Response:
    """Remove a field definition."""
    call(backends().lists_fields.DeleteField, lists_fields_pb2.DeleteFieldRequest(field_id=field_id))
    flash(_("The field was deleted."), "info")
    return redirect(url_for("audience.fields"))


# -------------------------------------------------------------------------------------------- imports


def detect_columns(sample: bytes, encoding: str) -> tuple[list[str], list[str], str]:
    """The first row and the second row of a CSV sample, and the encoding used to read them."""
    if encoding == "cp932":
        chosen = "cp932"
    else:
        try:
            # A cut at the sample's end may split a character: judge by the complete lines only.
            head = sample.rsplit(b"\n", 1)[0] if b"\n" in sample else sample
            head.decode("utf-8-sig")
            chosen = "utf-8-sig"
        except UnicodeDecodeError:
            chosen = "cp932" if not encoding else "utf-8-sig"
    text = sample.decode(chosen, errors="replace")
    lines = text.splitlines()[:2]
    try:
        dialect = csv.Sniffer().sniff(lines[0] if lines else "", delimiters=",\t;|")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    first = rows[0] if rows else []
    second = rows[1] if len(rows) > 1 else []
    return first, second, chosen


def guess_target(header: str, sample: str, fields: list[lists_fields_pb2.CustomField]) -> str:
    """The mapping a column most likely wants: email, name, a field key, or "" (skip)."""
    low = header.strip().lower()
    if low in EMAIL_HEADERS or _LOOKS_LIKE_EMAIL.match(header.strip()) or _LOOKS_LIKE_EMAIL.match(sample.strip()):
        return "email"
    if low in NAME_HEADERS:
        return "name"
    for field in fields:
        if low in (field.key.lower(), field.label.strip().lower()):
            return field.key
    return ""


@bp.get("/lists/<id:list_id>/import")
@requires("send")
def import_form(list_id: int) -> str:
    """Upload a CSV with an encoding override and a mode; the columns are mapped on the next page."""
    found = call(backends().lists.GetList, lists_pb2.GetListRequest(list_id=list_id))
    jobs = call(backends().lists_imports.ListImports, lists_imports_pb2.ListImportsRequest()).imports
    recent = [j for j in jobs if j.list_id == list_id]
    return render_template("import_form.html", mailing_list=found, imports=recent[:20])


@bp.post("/lists/<id:list_id>/import")
@requires("send")
def import_upload(list_id: int) -> Response | tuple[str, int] | str:
    """Hand the file to lists (not started yet) and show its columns for mapping."""
    file = request.files.get("file")
    data = file.read() if file else b""
    if not data:
        flash(_("Choose a CSV file to upload."), "error")
        return redirect(url_for("audience.import_form", list_id=list_id))
    encoding = IMPORT_ENCODINGS.get(request.form.get("encoding", "auto"))
    mode = IMPORT_MODES.get(request.form.get("mode", "add_and_update"))
    if encoding is None or mode is None:
        abort(400)
    first, second, used = detect_columns(data[:SAMPLE_BYTES], encoding)
    # Columns are mapped by number, so lists must know whether the first row is a header: it is unless it
    # holds an address.
    header = 2 if any(_LOOKS_LIKE_EMAIL.match(cell.strip()) for cell in first) else 1
    lists_stub = backends().lists_imports
    try:
        job = call(
            lists_stub.CreateImport,
            lists_imports_pb2.CreateImportRequest(
                list_id=list_id, mode=mode, encoding=encoding, header=header, total_bytes=len(data),
                file_name=(file.filename or "upload.csv")[:300],
            ),
        )  # fmt: skip
        for offset in range(0, len(data), UPLOAD_CHUNK):
            call(
                lists_stub.UploadImportChunk,
                lists_imports_pb2.UploadImportChunkRequest(
                    import_id=job.id, offset=offset, data=data[offset : offset + UPLOAD_CHUNK]
                ),
            )
    except BackendError as exc:
        _refused(exc)
        return redirect(url_for("audience.import_form", list_id=list_id))
    defined = _fields()
    columns = []
    for index, header in enumerate(first):
        sample = second[index] if index < len(second) else ""
        columns.append(
            {"number": index + 1, "header": header, "sample": sample, "guess": guess_target(header, sample, defined)}
        )
    return render_template(
        "import_mapping.html", list_id=list_id, job=job, columns=columns, fields=defined,
        encoding_label={"utf-8-sig": "UTF-8", "cp932": "Shift_JIS"}[used], has_header=header == 1,
    )  # fmt: skip


@bp.post("/lists/<id:list_id>/imports/<id:import_id>/start")
@requires("send")
def import_start(list_id: int, import_id: int) -> Response:
    """Start the uploaded job with the chosen mapping (column number to email, name, a field, or skip)."""
    job = call(backends().lists_imports.GetImport, lists_imports_pb2.GetImportRequest(import_id=import_id))
    if job.list_id != list_id:
        abort(404)
    mapping = {}
    for key, target in request.form.items():
        if key.startswith("column_") and key[7:].isdigit() and target:
            mapping[key[7:]] = target
    try:
        call(
            backends().lists_imports.StartImport,
            lists_imports_pb2.StartImportRequest(import_id=import_id, mapping=mapping, set_mapping=True),
        )
    except BackendError as exc:
        _refused(exc)
        return redirect(url_for("audience.import_form", list_id=list_id))
    return redirect(url_for("mail.import_detail", list_id=list_id, import_id=import_id))


def _own_import(list_id: int, import_id: int) -> None:
    job = call(backends().lists_imports.GetImport, lists_imports_pb2.GetImportRequest(import_id=import_id))
    if job.list_id != list_id:
        abort(404)


@bp.post("/lists/<id:list_id>/imports/<id:import_id>/resume")
@requires("send")
def import_resume(list_id: int, import_id: int) -> Response:
    """Continue a failed job from its last committed chunk."""
    _own_import(list_id, import_id)
    try:
        call(backends().lists_imports.ResumeImport, lists_imports_pb2.GetImportRequest(import_id=import_id))
    except BackendError as exc:
        _refused(exc)
    return redirect(url_for("mail.import_detail", list_id=list_id, import_id=import_id))


@bp.post("/lists/<id:list_id>/imports/<id:import_id>/rollback")
@requires("send")
def import_rollback(list_id: int, import_id: int) -> Response:
    """Undo what a job did."""
    _own_import(list_id, import_id)
    try:
        call(backends().lists_imports.RollbackImport, lists_imports_pb2.GetImportRequest(import_id=import_id))
    except BackendError as exc:
        _refused(exc)
    else:
        flash(_("The import was rolled back."), "info")
    return redirect(url_for("mail.import_detail", list_id=list_id, import_id=import_id))


@bp.get("/lists/<id:list_id>/imports/<id:import_id>/errors.csv")
@requires("read")
def import_errors(list_id: int, import_id: int) -> Response:
    """The bad rows (row number, reason, raw line) as CSV."""
    _own_import(list_id, import_id)
    pages = _opened(
        backends().lists_imports.StreamImportErrorRows, lists_imports_pb2.GetImportRequest(import_id=import_id)
    )

    def body() -> Iterator[bytes]:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        # UTF-8 with a BOM, so Excel reads the Japanese reasons and names right.
        writer.writerow(["\ufeff" + _("row"), _("reason"), _("raw")])
        for page in pages:
            for row in page.rows:
                writer.writerow(
                    formula_safe_row([row.row_number, explain_json(row.explanation_json, row.reason), row.raw])
                )
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
        yield buf.getvalue().encode("utf-8")

    return _attachment(body(), f"import-{import_id}-errors.csv", "text/csv")


# -------------------------------------------------------------------------------------------- exports


def _export_encoding() -> str:
    encoding = request.args.get("encoding", "utf-8")
    if encoding not in EXPORT_ENCODINGS:
        abort(400)
    return encoding


def _csv_type(encoding: str) -> str:
    return "text/csv; charset=shift_jis" if encoding == "shift_jis" else "text/csv; charset=utf-8"


@bp.get("/lists/<id:list_id>/export.csv")
@requires("read")
def export_list(list_id: int) -> Response:
    """A list's subscribers as CSV in UTF-8 (with a BOM for Excel) or Shift_JIS, streamed."""
    encoding = _export_encoding()
    return _download(
        backends().lists_imports.ExportSubscribers, lists_imports_pb2.ExportSubscribersRequest(list_id=list_id, encoding=encoding),
        f"list-{list_id}.csv", _csv_type(encoding),
    )  # fmt: skip


@bp.get("/segments/<id:segment_id>/export.csv")
@requires("read")
def export_segment(segment_id: int) -> Response:
    """A segment's subscribers as CSV, streamed."""
    encoding = _export_encoding()
    return _download(
        backends().lists_imports.ExportSubscribers,
        lists_imports_pb2.ExportSubscribersRequest(segment_id=segment_id, encoding=encoding),
        f"segment-{segment_id}.csv", _csv_type(encoding),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- subscribers


@bp.get("/subscribers")
@requires("read")
def subscribers() -> str:
    """Search by address, name, status, list and field value, a keyset page at a time."""
    args = request.args
    field_key, field_value = args.get("field_key", ""), args.get("field_value", "")
    query = lists_pb2.SearchSubscribersRequest(
        email_contains=args.get("email", "").strip(),
        name_contains=args.get("name", "").strip(),
        status=STATUS_VALUES.get(args.get("status", ""), 0),
        list_id=args.get("list_id", 0, type=int) or 0,
        field_key=field_key if field_value else "",
        field_value=field_value if field_key else "",
        page_size=50,
        page_token=args.get("page", ""),
    )
    try:
        found = call(backends().lists.SearchSubscribers, query)
    except BackendError as exc:
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        abort(400)
    available = call(backends().lists.ListLists, lists_pb2.ListListsRequest()).lists
    filters = {k: v for k, v in args.items() if k != "page"}
    next_url = url_for("audience.subscribers", **filters, page=found.next_page_token) if found.next_page_token else ""
    return render_template(
        "subscribers.html", found=found, lists=available, fields=_fields(), statuses=SUBSCRIBER_STATUSES, filters=filters,
        next_url=next_url,
    )  # fmt: skip


def _attributes(subscriber: lists_pb2.Subscriber) -> dict[str, Any]:
    try:
        value = json.loads(subscriber.attributes_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@bp.get("/subscribers/<id:subscriber_id>")
@requires("read")
def subscriber_detail(subscriber_id: int) -> str:
    """One subscriber: fields, status with its history, edit, personal data export and erasure."""
    subscriber = call(backends().lists.GetSubscriber, lists_pb2.GetSubscriberRequest(subscriber_id=subscriber_id))
    events = call(
        backends().lists.ListSubscriberEvents, lists_pb2.ListSubscriberEventsRequest(subscriber_id=subscriber_id)
    ).events
    return render_template(
        "subscriber.html", subscriber=subscriber, events=events, fields=_fields(), attributes=_attributes(subscriber),
        statuses=SUBSCRIBER_STATUSES,
    )  # fmt: skip


@bp.post("/subscribers/<id:subscriber_id>")
@requires("send")
def update_subscriber(subscriber_id: int) -> Response:
    """Change the name, field values or status (every status change is recorded with the reason)."""
    defined = _fields()
    attributes: dict[str, Any] = {}
    for field in defined:
        name = f"field.{field.key}"
        if name in request.form:
            value = request.form[name].strip()
            attributes[field.key] = value if value else None
    current = call(backends().lists.GetSubscriber, lists_pb2.GetSubscriberRequest(subscriber_id=subscriber_id))
    status = STATUS_VALUES.get(request.form.get("status", ""), 0)
    if status == current.status:
        status = 0  # unchanged: no status event
    try:
        call(
            backends().lists.UpdateSubscriber,
            lists_pb2.UpdateSubscriberRequest(
                subscriber_id=subscriber_id,
                name=request.form.get("name", "").strip(),
                attributes_json=json.dumps(attributes, ensure_ascii=False),
                status=status,
                reason=request.form.get("reason", "").strip()[:500] or "console",
            ),
        )
    except BackendError as exc:
        _refused(exc)
    else:
        flash(_("Saved."), "info")
    return redirect(url_for("audience.subscriber_detail", subscriber_id=subscriber_id))


@bp.get("/subscribers/<id:subscriber_id>/personal-data.json")
@requires("admin")
def subscriber_data(subscriber_id: int) -> Response:
    """Everything held about the subscriber, as a JSON download (a personal data request)."""
    data = call(
        backends().lists_privacy.ExportSubscriberData,
        lists_privacy_pb2.ExportSubscriberDataRequest(subscriber_id=subscriber_id),
    )
    response = Response(data.json, mimetype="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="subscriber-{subscriber_id}.json"'
    return response


@bp.post("/subscribers/<id:subscriber_id>/erase")
@requires("admin")
def erase_subscriber(subscriber_id: int) -> Response:
    """Erase the subscriber completely (a keyed hash stays suppressed); the typed address confirms it."""
    subscriber = call(backends().lists.GetSubscriber, lists_pb2.GetSubscriberRequest(subscriber_id=subscriber_id))
    if request.form.get("confirm_email", "").strip().lower() != subscriber.email.lower():
        flash(_("Type the subscriber's address to confirm the erasure."), "error")
        return redirect(url_for("audience.subscriber_detail", subscriber_id=subscriber_id))
    call(
        backends().lists_privacy.EraseSubscriber, lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=subscriber_id)
    )
    flash(_("The subscriber was erased."), "info")
    return redirect(url_for("audience.subscribers"))


# ------------------------------------------------------------------------------------------- segments

# What the builder offers: condition fields and the operators each takes.
BUILTIN_FIELDS = ("email", "name", "status", "list", "created_at", "subscribed_at")
TEXT_OPS = ("eq", "ne", "contains", "starts_with", "in", "is_empty")
ORDERED_OPS = ("eq", "ne", "gt", "lt", "between", "in", "is_empty")
OPS_BY_KIND = {
    "text": TEXT_OPS,
    "choice": TEXT_OPS,
    "number": ORDERED_OPS,
    "date": ORDERED_OPS,
    "status": ("eq", "ne", "in"),
    "list": ("eq", "ne", "in", "not_in"),
}
ALL_OPS = ("eq", "ne", "contains", "starts_with", "gt", "lt", "between", "in", "not_in", "is_empty")
MAX_GROUPS = 10
MAX_ROWS = 20


def _kind(field: str, defined: dict[str, lists_fields_pb2.CustomField]) -> str:
    if field.startswith("custom:"):
        found = defined.get(field[7:])
        return FIELD_TYPE_NAMES.get(found.type, "text") if found else "text"
    return {"status": "status", "list": "list", "created_at": "date", "subscribed_at": "date"}.get(field, "text")


def read_builder(form: Any) -> dict[str, Any]:
    """The builder's state from its form: a top-level match and groups of rows (field, op, value)."""
    state: dict[str, Any] = {"match": "any" if form.get("match") == "any" else "all", "groups": []}
    for g in range(min(int(form.get("groups", "1") or 1), MAX_GROUPS)):
        group = {"match": "any" if form.get(f"g{g}_match") == "any" else "all", "rows": []}
        for r in range(min(int(form.get(f"g{g}_rows", "1") or 1), MAX_ROWS)):
            prefix = f"g{g}_r{r}_"
            group["rows"].append(
                {
                    "field": form.get(prefix + "field", "email"),
                    "op": form.get(prefix + "op", "eq"),
                    "value": form.get(prefix + "value", ""),
                }
            )
        state["groups"].append(group)
    return state


def _value(row: dict[str, str], kind: str) -> Any:
    text = row["value"].strip()
    op = row["op"]
    if op == "is_empty":
        return True
    if op in ("in", "not_in", "between"):
        return [v.strip() for v in re.split(r"[,、\n]", text) if v.strip()]
    if kind == "number":
        try:
            return float(text) if "." in text else int(text)
        except ValueError:
            return text
    return text


def builder_tree(state: dict[str, Any], defined: dict[str, lists_fields_pb2.CustomField]) -> dict[str, Any]:
    """The condition tree lists compiles (to parameterised SQL) from the builder's rows and groups."""
    groups = []
    for group in state["groups"]:
        conditions = []
        for row in group["rows"]:
            field, kind = row["field"], _kind(row["field"], defined)
            if field.startswith("custom:"):
                condition = {"field": "custom", "key": field[7:], "op": row["op"], "value": _value(row, kind)}
            else:
                condition = {"field": field, "op": row["op"], "value": _value(row, kind)}
            conditions.append(condition)
        if conditions:
            groups.append({"match": group["match"], "conditions": conditions})
    return {"match": state["match"], "conditions": groups}


def builder_state(tree: dict[str, Any]) -> dict[str, Any]:
    """The builder's rows and groups for a saved tree (a condition outside a group gets a group of its own)."""
    state: dict[str, Any] = {"match": tree.get("match", "all"), "groups": []}
    for item in tree.get("conditions", []):
        group = item if "conditions" in item else {"match": "all", "conditions": [item]}
        rows = []
        for cond in group.get("conditions", []):
            if "conditions" in cond:
                continue  # deeper nesting is kept by the API only; the builder shows two levels
            field = f"custom:{cond.get('key')}" if cond.get("field") == "custom" else str(cond.get("field", "email"))
            value = cond.get("value", "")
            if isinstance(value, list):
                text = ", ".join(str(v) for v in value)
            else:
                text = "" if value is True else str(value)
            rows.append({"field": field, "op": str(cond.get("op", "eq")), "value": text})
        state["groups"].append({"match": group.get("match", "all"), "rows": rows or [_blank_row()]})
    if not state["groups"]:
        state["groups"].append({"match": "all", "rows": [_blank_row()]})
    return state


def _blank_row() -> dict[str, str]:
    return {"field": "email", "op": "contains", "value": ""}


def _builder_page(
    state: dict[str, Any], name: str, segment_id: int, preview: Any = None, error: str | None = None, status: int = 200
) -> tuple[str, int]:
    defined = _fields()
    available = call(backends().lists.ListLists, lists_pb2.ListListsRequest()).lists
    # The built-in fields' names are translated; a custom field's label is the admin's own text, shown as is.
    choices = [(f, _(f)) for f in BUILTIN_FIELDS] + [(f"custom:{f.key}", f.label or f.key) for f in defined]
    return render_template(
        "segment_builder.html", state=state, name=name, segment_id=segment_id, preview=preview, error=error,
        field_choices=choices, ops=ALL_OPS, lists=available, statuses=list(STATUS_VALUES),
    ), status  # fmt: skip


@bp.get("/segments")
@requires("read")
def segments() -> str:
    """The organisation's segments."""
    found = call(backends().lists_segments.ListSegments, lists_segments_pb2.ListSegmentsRequest()).segments
    return render_template("segments.html", segments=found)


@bp.get("/segments/new")
@requires("send")
def new_segment() -> tuple[str, int]:
    """An empty builder."""
    return _builder_page(builder_state({}), "", 0)


@bp.get("/segments/<id:segment_id>")
@requires("read")
def segment_detail(segment_id: int) -> tuple[str, int]:
    """A saved segment in the builder, with its count and sample."""
    segment = call(backends().lists_segments.GetSegment, lists_segments_pb2.GetSegmentRequest(segment_id=segment_id))
    preview = call(
        backends().lists_segments.PreviewSegment,
        lists_segments_pb2.PreviewSegmentRequest(segment_id=segment_id, sample_size=20),
    )
    return _builder_page(builder_state(json.loads(segment.conditions_json)), segment.name, segment_id, preview)


@bp.post("/segments/build")
@requires("send")
def build_segment() -> Any:
    """The builder's every button: add a row or group, remove a row, preview, save; the page re-renders."""
    state = read_builder(request.form)
    name = request.form.get("name", "").strip()
    segment_id = request.form.get("segment_id", 0, type=int) or 0
    action = request.form.get("action", "preview")
    if action == "add_group" and len(state["groups"]) < MAX_GROUPS:
        state["groups"].append({"match": "all", "rows": [_blank_row()]})
    elif action.startswith("add_row:"):
        index = int(action.split(":")[1]) if action.split(":")[1].isdigit() else -1
        if 0 <= index < len(state["groups"]) and len(state["groups"][index]["rows"]) < MAX_ROWS:
            state["groups"][index]["rows"].append(_blank_row())
    elif action.startswith("remove_row:"):
        parts = action.split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            g, r = int(parts[1]), int(parts[2])
            if g < len(state["groups"]) and r < len(state["groups"][g]["rows"]):
                del state["groups"][g]["rows"][r]
                if not state["groups"][g]["rows"]:
                    del state["groups"][g]
            if not state["groups"]:
                state["groups"].append({"match": "all", "rows": [_blank_row()]})
    if action not in ("preview", "save"):
        return _builder_page(state, name, segment_id)
    defined = {f.key: f for f in _fields()}
    tree = builder_tree(state, defined)
    conditions_json = json.dumps(tree, ensure_ascii=False)
    try:
        if action == "save":
            segment_input = lists_segments_pb2.SegmentInput(name=name, conditions_json=conditions_json)
            if segment_id:
                saved = call(
                    backends().lists_segments.UpdateSegment,
                    lists_segments_pb2.UpdateSegmentRequest(segment_id=segment_id, segment=segment_input),
                )
            else:
                saved = call(backends().lists_segments.CreateSegment, segment_input)
            flash(_("The segment was saved."), "info")
            return redirect(url_for("audience.segment_detail", segment_id=saved.id))
        preview = call(
            backends().lists_segments.PreviewSegment,
            lists_segments_pb2.PreviewSegmentRequest(conditions_json=conditions_json, sample_size=20),
        )
    except BackendError as exc:
        if exc.code not in (*_FORM_ERRORS, grpc.StatusCode.NOT_FOUND):
            raise
        return _builder_page(state, name, segment_id, error=exc.message, status=400)
    return _builder_page(state, name, segment_id, preview)


@bp.post("/segments/<id:segment_id>/delete")
@requires("send")
def delete_segment(segment_id: int) -> Response:
    """Remove a segment."""
    call(backends().lists_segments.DeleteSegment, lists_segments_pb2.GetSegmentRequest(segment_id=segment_id))
    flash(_("The segment was deleted."), "info")
    return redirect(url_for("audience.segments"))


# ---------------------------------------------------------------------------------------- suppression


@bp.get("/suppression")
@requires("read")
def suppression() -> str:
    """The organisation's suppression list: search by address and reason, a page at a time."""
    args = request.args
    try:
        found = call(
            backends().lists_suppression.ListSuppressions,
            lists_suppression_pb2.ListSuppressionsRequest(
                email_contains=args.get("q", "").strip(), reason=args.get("reason", ""), page_size=100,
                page_token=args.get("page", ""),
            ),
        )  # fmt: skip
    except BackendError as exc:
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        abort(400)
    filters = {k: v for k, v in args.items() if k != "page"}
    next_url = url_for("audience.suppression", **filters, page=found.next_page_token) if found.next_page_token else ""
    return render_template("suppression.html", found=found, filters=filters, next_url=next_url)


@bp.post("/suppression")
@requires("send")
def add_suppression() -> Response:
    """Suppress addresses typed by hand, one per line (stopping mail is allowed to editors)."""
    emails = [line.strip() for line in request.form.get("emails", "").splitlines() if line.strip()]
    if not emails:
        flash(_("Type at least one address."), "error")
        return redirect(url_for("audience.suppression"))
    try:
        reply = call(
            backends().lists_suppression.AddSuppressions,
            lists_suppression_pb2.AddSuppressionsRequest(emails=emails[:10000], reason="manual", source="console"),
        )
    except BackendError as exc:
        _refused(exc)
        return redirect(url_for("audience.suppression"))
    flash(_("%(count)d address(es) added to the suppression list.", count=reply.added), "info")
    for error in reply.errors[:20]:
        flash(_("Line %(line)d: %(reason)s", line=error.index + 1, reason=error.message), "error")
    return redirect(url_for("audience.suppression"))


@bp.post("/suppression/remove")
@requires("admin")
def remove_suppression() -> Response:
    """Take an address off the suppression list (admins only: it lets mail reach the address again)."""
    try:
        email = request.form.get("email", "").strip()
        call(
            backends().lists_suppression.RemoveSuppression, lists_suppression_pb2.RemoveSuppressionRequest(email=email)
        )
    except BackendError as exc:
        if exc.code != grpc.StatusCode.NOT_FOUND:
            raise
        flash(_("That address is not on the suppression list."), "error")
    else:
        flash(_("The address was removed from the suppression list."), "info")
    return redirect(url_for("audience.suppression"))


@bp.get("/suppression.csv")
@requires("read")
def export_suppression() -> Response:
    """The suppression list as CSV, streamed."""
    encoding = _export_encoding()
    return _download(
        backends().lists_suppression.ExportSuppressions, lists_suppression_pb2.ExportSuppressionsRequest(encoding=encoding),
        "suppression.csv", _csv_type(encoding),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- forms


@bp.get("/forms")
@requires("read")
def forms() -> str:
    """The signup forms, and the form to make one."""
    found = call(backends().lists_signup.ListForms, lists_signup_pb2.ListFormsRequest()).forms
    available = call(backends().lists.ListLists, lists_pb2.ListListsRequest()).lists
    sender = call(backends().lists_signup.GetSettings, lists_signup_pb2.GetSettingsRequest()).sender_address
    return render_template("forms.html", forms=found, lists=available, fields=_fields(), has_sender=bool(sender))


@bp.post("/forms")
@requires("send")
def create_form() -> Response:
    """Save a signup form for a list with chosen fields and a thanks text."""
    try:
        created = call(
            backends().lists_signup.CreateForm,
            lists_signup_pb2.FormInput(
                list_id=request.form.get("list_id", 0, type=int) or 0,
                name=request.form.get("name", "").strip(),
                field_keys=request.form.getlist("field_keys"),
                ask_name=request.form.get("ask_name") == "1",
                redirect_url=request.form.get("redirect_url", "").strip(),
                thanks_text=request.form.get("thanks_text", "").strip(),
            ),
        )
    except BackendError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            exc = BackendError(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        _refused(exc)
        return redirect(url_for("audience.forms"))
    return redirect(url_for("audience.form_detail", form_id=created.id))


@bp.get("/forms/<id:form_id>")
@requires("read")
def form_detail(form_id: int) -> str:
    """A form's hosted page address and its embeddable snippet (shown as text, never as markup)."""
    snippet = call(backends().lists_signup.GetFormSnippet, lists_signup_pb2.GetFormSnippetRequest(form_id=form_id))
    found = [
        f for f in call(backends().lists_signup.ListForms, lists_signup_pb2.ListFormsRequest()).forms if f.id == form_id
    ]
    if not found:
        abort(404)
    hosted = url_for("public.signup_page", form_id=form_id, _external=True, _scheme="https")
    return render_template("form_detail.html", form=found[0], snippet=snippet.html, hosted=hosted)


# ------------------------------------------------------------------------------------------- settings


@bp.get("/audience-settings")
@requires("admin")
def settings() -> str:
    """The organisation's lists settings: unsubscribe confirmation mail and the sender of list mail."""
    current = call(backends().lists_signup.GetSettings, lists_signup_pb2.GetSettingsRequest())
    return render_template("audience_settings.html", settings=current)


@bp.post("/audience-settings")
@requires("admin")
def save_settings() -> Response:
    """Save the lists settings."""
    try:
        call(
            backends().lists_signup.UpdateSettings,
            lists_signup_pb2.ListsSettings(
                confirm_unsubscribe=request.form.get("confirm_unsubscribe") == "1",
                sender_address=request.form.get("sender_address", "").strip(),
                sender_name=request.form.get("sender_name", "").strip(),
            ),
        )
    except BackendError as exc:
        _refused(exc)
    else:
        flash(_("Saved."), "info")
    return redirect(url_for("audience.settings"))
