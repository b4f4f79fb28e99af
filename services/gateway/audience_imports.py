"""The console's CSV import pages (upload, preview and mapping, start, resume, rollback, errors) and the
list and segment exports (lists' ListsImportsService)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from mailblast.v1 import (
    lists_imports_pb2,
    lists_pb2,
)

from services.common.spreadsheet import formula_safe_row
from services.gateway.audience import (
    attachment,
    csv_type,
    defined_fields,
    download,
    export_encoding,
    opened,
    refused,
)
from services.gateway.clients import BackendError, backends, call
from services.gateway.explanations import explain_json
from services.gateway.mail import UPLOAD_CHUNK
from services.gateway.security import requires

bp = Blueprint("imports", __name__)

IMPORT_MODES = {
    "add_and_update": lists_imports_pb2.IMPORT_MODE_ADD_AND_UPDATE,
    "add_only": lists_imports_pb2.IMPORT_MODE_ADD_ONLY,
    "update_only": lists_imports_pb2.IMPORT_MODE_UPDATE_ONLY,
}
# What the encoding menu offers, and what lists calls them ("" lets lists detect it).
IMPORT_ENCODINGS = {"auto": "", "utf-8": "utf-8", "shift_jis": "cp932"}
# The codecs lists reads files with, as people call them.
CODEC_LABELS = {"utf-8-sig": "UTF-8", "cp932": "Shift_JIS"}


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
    """Hand the file to lists (not started yet) and show its columns, as lists reads them, for mapping."""
    file = request.files.get("file")
    data = file.read() if file else b""
    if not data:
        flash(_("Choose a CSV file to upload."), "error")
        return redirect(url_for("imports.import_form", list_id=list_id))
    encoding = IMPORT_ENCODINGS.get(request.form.get("encoding", "auto"))
    mode = IMPORT_MODES.get(request.form.get("mode", "add_and_update"))
    if encoding is None or mode is None:
        abort(400)
    imports = backends().lists_imports
    try:
        job = call(
            imports.CreateImport,
            lists_imports_pb2.CreateImportRequest(
                list_id=list_id, mode=mode, encoding=encoding, total_bytes=len(data),
                file_name=(file.filename or "upload.csv")[:300],
            ),
        )  # fmt: skip
        for offset in range(0, len(data), UPLOAD_CHUNK):
            call(
                imports.UploadImportChunk,
                lists_imports_pb2.UploadImportChunkRequest(
                    import_id=job.id, offset=offset, data=data[offset : offset + UPLOAD_CHUNK]
                ),
            )
        # Columns are mapped by number; lists keeps the header decision it shows here for the run.
        preview = call(imports.PreviewImport, lists_imports_pb2.GetImportRequest(import_id=job.id))
    except BackendError as exc:
        refused(exc)
        return redirect(url_for("imports.import_form", list_id=list_id))
    columns = [{"number": c.number, "header": c.first, "sample": c.second, "guess": c.target} for c in preview.columns]
    return render_template(
        "import_mapping.html", list_id=list_id, job=job, columns=columns, fields=defined_fields(),
        encoding_label=CODEC_LABELS.get(preview.encoding, preview.encoding), has_header=preview.has_header,
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
        refused(exc)
        return redirect(url_for("imports.import_form", list_id=list_id))
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
        refused(exc)
    return redirect(url_for("mail.import_detail", list_id=list_id, import_id=import_id))


@bp.post("/lists/<id:list_id>/imports/<id:import_id>/rollback")
@requires("send")
def import_rollback(list_id: int, import_id: int) -> Response:
    """Undo what a job did."""
    _own_import(list_id, import_id)
    try:
        call(backends().lists_imports.RollbackImport, lists_imports_pb2.GetImportRequest(import_id=import_id))
    except BackendError as exc:
        refused(exc)
    else:
        flash(_("The import was rolled back."), "info")
    return redirect(url_for("mail.import_detail", list_id=list_id, import_id=import_id))


@bp.get("/lists/<id:list_id>/imports/<id:import_id>/errors.csv")
@requires("read")
def import_errors(list_id: int, import_id: int) -> Response:
    """The bad rows (row number, reason, raw line) as CSV."""
    _own_import(list_id, import_id)
    pages = opened(
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

    return attachment(body(), f"import-{import_id}-errors.csv", "text/csv")


@bp.get("/lists/<id:list_id>/export.csv")
@requires("read")
def export_list(list_id: int) -> Response:
    """A list's subscribers as CSV in UTF-8 (with a BOM for Excel) or Shift_JIS, streamed."""
    encoding = export_encoding()
    return download(
        backends().lists_imports.ExportSubscribers,
        lists_imports_pb2.ExportSubscribersRequest(list_id=list_id, encoding=encoding),
        f"list-{list_id}.csv", csv_type(encoding),
    )  # fmt: skip


@bp.get("/segments/<id:segment_id>/export.csv")
@requires("read")
def export_segment(segment_id: int) -> Response:
    """A segment's subscribers as CSV, streamed."""
    encoding = export_encoding()
    return download(
        backends().lists_imports.ExportSubscribers,
        lists_imports_pb2.ExportSubscribersRequest(segment_id=segment_id, encoding=encoding),
        f"segment-{segment_id}.csv", csv_type(encoding),
    )  # fmt: skip
