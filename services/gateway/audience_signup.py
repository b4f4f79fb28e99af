"""The console's signup form pages and the organisation's lists settings (ListsSignupService)."""

from __future__ import annotations

import grpc
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from mailblast.v1 import (
    lists_pb2,
    lists_signup_pb2,
)

from services.gateway.audience import (
    defined_fields,
    refused,
)
from services.gateway.clients import BackendError, backends, call
from services.gateway.numbers import form_id
from services.gateway.security import requires

bp = Blueprint("signup", __name__)


@bp.get("/forms")
@requires("read")
def forms() -> str:
    """The signup forms, and the form to make one."""
    found = call(backends().lists_signup.ListForms, lists_signup_pb2.ListFormsRequest()).forms
    available = call(backends().lists.ListLists, lists_pb2.ListListsRequest()).lists
    sender = call(backends().lists_signup.GetSettings, lists_signup_pb2.GetSettingsRequest()).sender_address
    return render_template("forms.html", forms=found, lists=available, fields=defined_fields(), has_sender=bool(sender))


@bp.post("/forms")
@requires("send")
def create_form() -> Response:
    """Save a signup form for a list with chosen fields and a thanks text."""
    try:
        created = call(
            backends().lists_signup.CreateForm,
            lists_signup_pb2.FormInput(
                list_id=form_id(request.form.get("list_id")),
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
        refused(exc)
        return redirect(url_for("signup.forms"))
    return redirect(url_for("signup.form_detail", form_id=created.id))


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
        refused(exc)
    else:
        flash(_("Saved."), "info")
    return redirect(url_for("signup.settings"))
