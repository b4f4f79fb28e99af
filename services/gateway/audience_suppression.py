"""The console's suppression list pages: search, add, remove, export (ListsSuppressionService)."""

from __future__ import annotations

import grpc
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from mailblast.v1 import (
    lists_suppression_pb2,
)

from services.gateway.audience import (
    csv_type,
    download,
    export_encoding,
    refused,
)
from services.gateway.clients import BackendError, backends, call
from services.gateway.security import requires

bp = Blueprint("suppression", __name__)


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
    next_url = (
        url_for("suppression.suppression", **filters, page=found.next_page_token) if found.next_page_token else ""
    )
    return render_template("suppression.html", found=found, filters=filters, next_url=next_url)


@bp.post("/suppression")
@requires("send")
def add_suppression() -> Response:
    """Suppress addresses typed by hand, one per line (stopping mail is allowed to editors)."""
    emails = [line.strip() for line in request.form.get("emails", "").splitlines() if line.strip()]
    if not emails:
        flash(_("Type at least one address."), "error")
        return redirect(url_for("suppression.suppression"))
    try:
        reply = call(
            backends().lists_suppression.AddSuppressions,
            lists_suppression_pb2.AddSuppressionsRequest(emails=emails[:10000], reason="manual", source="console"),
        )
    except BackendError as exc:
        refused(exc)
        return redirect(url_for("suppression.suppression"))
    flash(_("%(count)d address(es) added to the suppression list.", count=reply.added), "info")
    for error in reply.errors[:20]:
        flash(_("Line %(line)d: %(reason)s", line=error.index + 1, reason=error.message), "error")
    return redirect(url_for("suppression.suppression"))


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
    return redirect(url_for("suppression.suppression"))


@bp.get("/suppression.csv")
@requires("read")
def export_suppression() -> Response:
    """The suppression list as CSV, streamed."""
    encoding = export_encoding()
    return download(
        backends().lists_suppression.ExportSuppressions,
        lists_suppression_pb2.ExportSuppressionsRequest(encoding=encoding),
        "suppression.csv", csv_type(encoding),
    )  # fmt: skip
