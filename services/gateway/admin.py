"""Admin pages: users and roles, the organisation's security settings, the audit log; and everyone's API tokens."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, stream_with_context, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import auth_pb2

from services.common.spreadsheet import formula_safe_row
from services.gateway.clients import BackendError, backends, call
from services.gateway.security import requires

bp = Blueprint("admin", __name__)

ROLES = ("viewer", "editor", "admin", "owner")
SCOPES = ("read", "send", "admin")
_FORM_ERRORS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
)


def _flash_refusal(exc: BackendError) -> None:
    if exc.code not in _FORM_ERRORS:
        raise exc
    flash(_("Refused: %(reason)s", reason=exc.message), "error")


def _user_action(user_id: int, method, message, done: str) -> Response:
    try:
        call(method, message)
    except BackendError as exc:
        _flash_refusal(exc)
    else:
        flash(done, "info")
    return redirect(url_for("admin.users"))


@bp.get("/users")
@requires("admin")
def users() -> str:
    """The organisation's users, with their role, lock and 2FA state, and the organisation's settings."""
    found = call(backends().auth.ListUsers, auth_pb2.ListUsersRequest()).users
    organization = call(backends().auth.GetOrganization, auth_pb2.GetOrganizationRequest())
    now = datetime.now(UTC)
    locked = {u.id for u in found if u.HasField("locked_until") and u.locked_until.ToDatetime(tzinfo=UTC) > now}
    return render_template("users.html", users=found, roles=ROLES, locked=locked, organization=organization)


@bp.post("/users")
@requires("admin")
def create_user() -> Response:
    """Add a user; with the box ticked, mail them an invitation link to set their password."""
    try:
        user = call(
            backends().auth.CreateUser,
            auth_pb2.CreateUserRequest(
                login=request.form.get("login", "").strip(),
                email=request.form.get("email", "").strip(),
                role=request.form.get("role", "viewer"),
                send_invite=bool(request.form.get("send_invite")),
            ),
        )
    except BackendError as exc:
        _flash_refusal(exc)
    else:
        flash(_("User %(login)s was created.", login=user.login), "info")
    return redirect(url_for("admin.users"))


@bp.post("/users/<id:user_id>/role")
@requires("admin")
def change_role(user_id: int) -> Response:
    """Give a user another role."""
    message = auth_pb2.UpdateUserRoleRequest(user_id=user_id, role=request.form.get("role", ""))
    return _user_action(user_id, backends().auth.UpdateUserRole, message, _("The role was changed."))


@bp.post("/users/<id:user_id>/disable")
@requires("admin")
def disable_user(user_id: int) -> Response:
    """Stop a user: sessions end, tokens are refused."""
    message = auth_pb2.DisableUserRequest(user_id=user_id)
    return _user_action(user_id, backends().auth.DisableUser, message, _("The user was disabled."))


@bp.post("/users/<id:user_id>/unlock")
@requires("admin")
def unlock_user(user_id: int) -> Response:
    """Lift a lockout."""
    message = auth_pb2.UnlockRequest(user_id=user_id)
    return _user_action(user_id, backends().auth.Unlock, message, _("The account was unlocked."))


@bp.post("/users/<id:user_id>/reset")
@requires("admin")
def reset_user(user_id: int) -> Response:
    """Mail a user a single-use link to set a new password."""
    message = auth_pb2.RequestPasswordResetRequest(user_id=user_id)
    return _user_action(user_id, backends().auth.RequestPasswordReset, message, _("A reset link was mailed."))


@bp.post("/settings")
@requires("admin")
def settings() -> Response:
    """Require two-step verification for everyone, or not."""
    require = bool(request.form.get("require_totp"))
    call(
        backends().auth.SetOrganizationSettings,
        auth_pb2.SetOrganizationSettingsRequest(settings=auth_pb2.OrganizationSettings(require_totp=require)),
    )
    flash(_("The settings were saved."), "info")
    return redirect(url_for("admin.users"))


@bp.get("/tokens")
@requires("read")
def tokens() -> str:
    """API tokens with their last use, never their secrets: an admin sees the organisation's, others their own."""
    found = call(backends().auth.ListApiTokens, auth_pb2.ListApiTokensRequest()).tokens
    logins = {current_user.user.id: current_user.user.login}
    if current_user.can("admin"):
        logins = {u.id: u.login for u in call(backends().auth.ListUsers, auth_pb2.ListUsersRequest()).users}
    # A token is only ever one's own, and no stronger than one's role: only those scopes are offered.
    offered = [s for s in SCOPES if s in current_user.principal.scopes]
    return render_template("tokens.html", tokens=found, logins=logins, scopes=offered)


@bp.post("/tokens")
@requires("read")
def create_token() -> Response | str:
    """Issue a token to yourself; its secret is on this one page and nowhere else."""
    try:
        reply = call(
            backends().auth.CreateApiToken,
            auth_pb2.CreateApiTokenRequest(
                name=request.form.get("name", "").strip(),
                scopes=[s for s in request.form.getlist("scopes") if s in SCOPES],
            ),
        )
    except BackendError as exc:
        _flash_refusal(exc)
        return redirect(url_for("admin.tokens"))
    return render_template("token_created.html", token=reply.token, secret=reply.secret)


@bp.post("/tokens/<id:token_id>/revoke")
@requires("read")
def revoke_token(token_id: int) -> Response:
    """Revoke a token at once (auth refuses another user's unless you are an admin)."""
    call(backends().auth.RevokeApiToken, auth_pb2.RevokeApiTokenRequest(token_id=token_id))
    flash(_("The token was revoked."), "info")
    return redirect(url_for("admin.tokens"))


def _day(value: str, end: bool = False) -> Timestamp | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        abort(400)
    if end:
        day += timedelta(days=1)
    ts = Timestamp()
    ts.FromDatetime(day)
    return ts


# Every action the audit log can hold, as people read it (the code stays beside it for filtering).
AUDIT_ACTIONS = {
    "login.succeeded": _l("Login succeeded"),
    "login.failed": _l("Login failed"),
    "login.locked": _l("Account locked"),
    "user.unlocked": _l("Account unlocked"),
    "session.logout": _l("Logged out"),
    "session.revoked": _l("Session revoked"),
    "password.changed": _l("Password changed"),
    "password.reset_requested": _l("Password reset requested"),
    "password.reset": _l("Password reset"),
    "password.reset_refused": _l("Password reset refused"),
    "totp.enabled": _l("Two-factor authentication turned on"),
    "totp.disabled": _l("Two-factor authentication turned off"),
    "totp.recovery_code_used": _l("Recovery code used"),
    "user.created": _l("User created"),
    "user.invited": _l("User invited"),
    "user.role_changed": _l("Role changed"),
    "user.disabled": _l("User disabled"),
    "api_token.created": _l("API token issued"),
    "api_token.revoked": _l("API token revoked"),
    "organization.settings_changed": _l("Security settings changed"),
    "campaign.sent": _l("Campaign send started"),
    "sending_domain.added": _l("Sending domain added"),
    "sending_domain.deleted": _l("Sending domain deleted"),
    "campaign.scheduled": _l("Campaign scheduled"),
    "campaign.unscheduled": _l("Campaign schedule withdrawn"),
    "campaigns.settings_changed": _l("Campaign settings changed"),
    "subscriber.erased": _l("Subscriber erased"),
    "subscriber.data_exported": _l("Personal data exported"),
    "list.exported": _l("Subscribers exported"),
    "suppression.exported": _l("Suppression list exported"),
    "import.errors_exported": _l("Rejected import rows exported"),
    "import.started": _l("Import started"),
    "import.resumed": _l("Import resumed"),
    "import.finished": _l("Import finished"),
    "import.rolled_back": _l("Import rolled back"),
    "lists.settings_changed": _l("List settings changed"),
    "form.created": _l("Signup form created"),
    "field.created": _l("Custom field created"),
    "field.deleted": _l("Custom field deleted"),
    "segment.created": _l("Segment created"),
    "segment.updated": _l("Segment changed"),
    "segment.deleted": _l("Segment deleted"),
    "suppression.added": _l("Addresses added to the suppression list"),
    "suppression.removed": _l("Address taken off the suppression list"),
}


def action_label(action: str) -> str:
    """The action in the user's language; an action this console does not know shows as its code."""
    label = AUDIT_ACTIONS.get(action)
    return str(label) if label is not None else action


def _audit_request(page_size: int, page_token: str = "") -> auth_pb2.ListAuditEventsRequest:
    message = auth_pb2.ListAuditEventsRequest(
        action=request.args.get("action", "").strip(), page_size=page_size, page_token=page_token
    )
    since = _day(request.args.get("since", ""))
    until = _day(request.args.get("until", ""), end=True)
    if since is not None:
        message.since.CopyFrom(since)
    if until is not None:
        message.until.CopyFrom(until)
    return message


@bp.get("/audit")
@requires("admin")
def audit() -> str:
    """The audit log, newest first, filtered by action and day, a page at a time."""
    try:
        reply = call(backends().auth.ListAuditEvents, _audit_request(50, request.args.get("page", "")))
    except BackendError as exc:
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        abort(400)
    people = call(backends().auth.ListUsers, auth_pb2.ListUsersRequest()).users
    filters = {k: request.args.get(k, "") for k in ("action", "since", "until")}
    return render_template(
        "audit.html",
        events=reply.events,
        next_page=reply.next_page_token,
        logins={u.id: u.login for u in people},
        filters=filters,
        action_label=action_label,
    )


@bp.get("/audit.csv")
@requires("admin")
def audit_csv() -> Response:
    """The filtered audit log as CSV, streamed a page at a time."""
    first = _audit_request(1000)

    def rows() -> Iterator[str]:
        out = io.StringIO()
        # A byte-order mark, so that Excel opens the UTF-8 (Japanese) text correctly.
        out.write("\ufeff")
        writer = csv.writer(out)
        # New columns go last, so spreadsheets built on the older export keep working.
        header = ["id", "at", "user_id", "source_ip", "action", "target", "service", "detail"]
        writer.writerow([*header, "api_token_id", "action_label"])
        message = first
        while True:
            reply = call(backends().auth.ListAuditEvents, message)
            for event in reply.events:
                writer.writerow(
                    formula_safe_row(
                        [
                            event.id,
                            event.at.ToDatetime(tzinfo=UTC).isoformat(),
                            event.user_id or "",
                            event.source_ip,
                            event.action,
                            event.target,
                            event.service,
                            json.dumps(json.loads(event.detail_json or "{}"), ensure_ascii=False),
                            event.api_token_id or "",
                            action_label(event.action),
                        ]
                    )
                )
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            if not reply.next_page_token:
                return
            message = auth_pb2.ListAuditEventsRequest()
            message.CopyFrom(first)
            message.page_token = reply.next_page_token

    response = Response(stream_with_context(rows()), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="mailblast-audit.csv"'
    return response
