"""Public pages for subscribers, no login: one-click and chosen unsubscribe, hosted signup, confirmation.

The gateway calls lists as the service "gateway": the signed unsubscribe token, the form id or the
confirmation token names the organisation, never anything the visitor could choose.
"""

from __future__ import annotations

from typing import Any

import grpc
from flask import Blueprint, abort, redirect, render_template, request
from flask_babel import gettext as _
from mailblast.v1 import lists_signup_pb2

from services.gateway.clients import BackendError, backends, call, client_ip
from services.gateway.numbers import form_ids

bp = Blueprint("public", __name__)

# Signup fields arrive as field.<key>, as the embeddable snippet names them.
FIELD_PREFIX = "field."
HONEYPOT = "website"


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status


def _gone() -> tuple[str, int]:
    # The same short answer for a forged, mistyped or expired link: nothing about who or why.
    return _page("public_message.html", 404, title=_("Link not valid"), message=_("This link is not valid."))


def _too_many() -> tuple[str, int]:
    return _page(
        "public_message.html",
        429,
        title=_("Too many attempts"),
        message=_("Too many attempts from your address. Please try again in an hour."),
    )


# ------------------------------------------------------------------------------------------ unsubscribe


@bp.post("/u/<token>")
def one_click(token: str) -> Any:
    """RFC 8058 one-click unsubscribe: committed by lists before this answers; no cookie, no page needed."""
    if request.form.get("List-Unsubscribe") != "One-Click":
        abort(400)
    try:
        call(
            backends().lists_signup.Unsubscribe,
            lists_signup_pb2.UnsubscribeRequest(token=token, source="one-click"),
            as_service=True,
        )
    except BackendError as exc:
        if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return _gone()
        raise
    return _page("public_message.html", title=_("Unsubscribed"), message=_("You have been unsubscribed."))


@bp.get("/u/<token>")
def unsubscribe_page(token: str) -> Any:
    """The page behind the List-Unsubscribe link: which lists to leave; nothing changes until the form is sent."""
    try:
        page = call(
            backends().lists_signup.GetUnsubscribePage,
            lists_signup_pb2.GetUnsubscribePageRequest(token=token),
            as_service=True,
        )
    except BackendError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return _gone()
        raise
    return render_template("unsubscribe.html", page=page, token=token)


@bp.post("/u/<token>/choose")
def unsubscribe_choose(token: str) -> Any:
    """Leave the chosen lists, or everything (which also suppresses the address)."""
    everything = request.form.get("action") == "all"
    chosen: list[int] = []
    if not everything:
        chosen = form_ids(request.form.getlist("list_ids"))
        if not chosen:
            return _page(
                "public_message.html", 400, title=_("Nothing chosen"), message=_("Choose at least one list to leave.")
            )
    try:
        left = call(
            backends().lists_signup.Unsubscribe,
            lists_signup_pb2.UnsubscribeRequest(token=token, list_ids=chosen, source="page"),
            as_service=True,
        )
    except BackendError as exc:
        if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return _gone()
        raise
    message = (
        _("You have been unsubscribed from every list.")
        if everything
        else _("You have left %(count)d list(s).", count=len(left.left_list_ids))
    )
    return _page("public_message.html", title=_("Unsubscribed"), message=message)


# ----------------------------------------------------------------------------------------------- signup


def _public_form(form_id: int) -> lists_signup_pb2.PublicForm | None:
    try:
        return call(
            backends().lists_signup.GetPublicForm,
            lists_signup_pb2.GetPublicFormRequest(form_id=form_id),
            as_service=True,
        )
    except BackendError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise


@bp.get("/f/<id:form_id>")
def signup_page(form_id: int) -> Any:
    """The hosted signup page of a form."""
    form = _public_form(form_id)
    if form is None:
        return _gone()
    return render_template("signup.html", form=form, values={}, error=None)


def _thanks(reply: Any) -> Any:
    if reply.redirect_url:
        # Set by the form's owner in the console and checked to be http(s) by lists.
        return redirect(reply.redirect_url, code=303)
    return _page(
        "public_message.html",
        title=_("Thank you"),
        message=reply.thanks_text or _("Please check your mailbox and confirm your subscription."),
    )


@bp.post("/f/<id:form_id>")
def signup_submit(form_id: int) -> Any:
    """A signup from the hosted page or an embedded snippet on another site (hence no CSRF token)."""
    fields = {k[len(FIELD_PREFIX) :]: v for k, v in request.form.items() if k.startswith(FIELD_PREFIX) and v}
    try:
        reply = call(
            backends().lists_signup.SubmitSignup,
            lists_signup_pb2.SubmitSignupRequest(
                form_id=form_id,
                email=request.form.get("email", ""),
                name=request.form.get("name", ""),
                fields=fields,
                source_ip=client_ip(),
                user_agent=request.headers.get("User-Agent", "")[:500],
                honeypot=request.form.get(HONEYPOT, ""),
            ),
            as_service=True,
        )
    except BackendError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return _gone()
        if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _too_many()
        if exc.code == grpc.StatusCode.FAILED_PRECONDITION:
            # The form's organisation has no sender for the confirmation mail: no thanks for a mail never sent.
            return _page(
                "public_message.html",
                503,
                title=_("Signups are closed for now"),
                message=_("This form cannot take signups at the moment. Please try again later."),
            )
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        form = _public_form(form_id)
        if form is None:
            return _gone()
        return _page("signup.html", 400, form=form, values=request.form, error=exc.message)
    return _thanks(reply)


@bp.get("/c/<token>")
def confirm_page(token: str) -> Any:
    """The link in the confirmation mail: a button, because mail scanners fetch links without a person."""
    return render_template("confirm.html", token=token)


@bp.post("/c/<token>")
def confirm_submit(token: str) -> Any:
    """The person pressed the button: the subscriber becomes active on the form's list."""
    try:
        reply = call(
            backends().lists_signup.ConfirmSignup, lists_signup_pb2.ConfirmSignupRequest(token=token), as_service=True
        )
    except BackendError as exc:
        if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            return _gone()
        raise
    if reply.redirect_url:
        return redirect(reply.redirect_url, code=303)
    return _page(
        "public_message.html",
        title=_("Subscription confirmed"),
        message=reply.thanks_text or _("Your subscription is confirmed. Thank you."),
    )
