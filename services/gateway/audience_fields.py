"""The console's custom fields pages (lists' ListsFieldsService)."""

from __future__ import annotations

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from mailblast.v1 import (
    lists_fields_pb2,
)

from services.gateway.audience import (
    FIELD_TYPE_NAMES,
    FIELD_TYPES,
    defined_fields,
    refused,
)
from services.gateway.clients import BackendError, backends, call
from services.gateway.security import requires

bp = Blueprint("fields", __name__)


@bp.get("/fields")
@requires("read")
def fields() -> str:
    """The organisation's custom fields, and the form to add one."""
    return render_template("fields.html", fields=defined_fields(), types=FIELD_TYPE_NAMES)


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
        refused(exc)
    else:
        flash(_("The field was added."), "info")
    return redirect(url_for("fields.fields"))


@bp.post("/fields/<id:field_id>/delete")
@requires("admin")
def delete_field(field_id: int) -> Response:
    """Remove a field definition."""
    call(backends().lists_fields.DeleteField, lists_fields_pb2.DeleteFieldRequest(field_id=field_id))
    flash(_("The field was deleted."), "info")
    return redirect(url_for("fields.fields"))
