"""Account pages: login (with TOTP), logout, forgotten and changed password, two-step set-up, profile."""

from __future__ import annotations

import grpc
import segno
from flask import Blueprint, Response, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import current_user
from mailblast.v1 import auth_pb2
from markupsafe import Markup

from services.gateway.clients import BackendError, backends, call, client_ip
from services.gateway.security import (
    DEVICE_COOKIE,
    DEVICE_COOKIE_SECONDS,
    LANGUAGE_COOKIE,
    LANGUAGES,
    TIME_ZONE_COOKIE,
    safe_next,
)
from services.gateway.timezones import offered_zones, viewer_zone, zone_or_none

bp = Blueprint("account", __name__)

# Refusals the user can act on: shown on the form rather than as an error page.
_FORM_ERRORS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
)


def _start_session(reply: auth_pb2.LoginResponse) -> None:
    # A new Flask session (and so a new CSRF token) at every login: nothing from before survives (ASVS 7.2.4).
    next_page = session.get("next")
    session.clear()
    session["sid"] = reply.session_token
    session["idle"] = int(reply.idle_timeout_seconds)
    if next_page:
        session["next"] = next_page


def _with_device_cookie(response: Response, reply: auth_pb2.LoginResponse) -> Response:
    # Auth decides and signs; the browser only keeps what auth gave it after a successful login.
    if reply.device_cookie:
        response.set_cookie(
            DEVICE_COOKIE, reply.device_cookie, max_age=DEVICE_COOKIE_SECONDS, path="/", secure=True,
            httponly=True, samesite="Strict",
        )  # fmt: skip
    return response


def _after_login(reply: auth_pb2.LoginResponse) -> Response:
    target = safe_next(session.pop("next", None)) or url_for("gateway.home")
    return _with_device_cookie(redirect(target), reply)


def _login_failure(status: int) -> str:
    if status == auth_pb2.LOGIN_STATUS_LOCKED:
        return _(
            "This login is locked for this browser after repeated failed logins. Try again later, log in from "
            "a browser you have logged in with before, or ask an administrator to unlock it."
        )
    if status == auth_pb2.LOGIN_STATUS_THROTTLED:
        return _("Too many failed logins from your address. Wait a minute and try again.")
    return _("The login ID or password is wrong.")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    """The login form: login ID and password."""
    if request.method == "GET":
        if request.args.get("next"):
            session["next"] = safe_next(request.args["next"])
        return render_template("login.html")
    reply = call(
        backends().auth.Login,
        auth_pb2.LoginRequest(
            login=request.form.get("login", "").strip(),
            password=request.form.get("password", ""),
            source_ip=client_ip(),
            user_agent=request.headers.get("User-Agent", "")[:500],
            device_cookie=request.cookies.get(DEVICE_COOKIE, ""),
        ),
        as_service=True,
    )
    if reply.status == auth_pb2.LOGIN_STATUS_OK:
        _start_session(reply)
        return _after_login(reply)
    if reply.status == auth_pb2.LOGIN_STATUS_TOTP_SETUP_REQUIRED:
        _start_session(reply)
        flash(_("Your organisation requires two-step verification: set it up to continue."), "warning")
        return _with_device_cookie(redirect(url_for("account.totp")), reply)
    if reply.status == auth_pb2.LOGIN_STATUS_TOTP_REQUIRED:
        next_page = session.get("next")
        session.clear()
        session["challenge"] = reply.challenge_token
        if next_page:
            session["next"] = next_page
        return redirect(url_for("account.login_totp"))
    return render_template("login.html", error=_login_failure(reply.status), login=request.form.get("login", "")), 401


@bp.route("/login/totp", methods=["GET", "POST"])
def login_totp() -> Response | str:
    """The second step: a code from the authenticator app, or a recovery code."""
    challenge = session.get("challenge")
    if not challenge:
        return redirect(url_for("account.login"))
    if request.method == "GET":
        return render_template("login_totp.html")
    code = request.form.get("code", "").strip().replace(" ", "")
    recovery = request.form.get("recovery_code", "").strip()
    reply = call(
        backends().auth.Login,
        auth_pb2.LoginRequest(
            challenge_token=challenge,
            totp_code="" if recovery else code,
            recovery_code=recovery,
            source_ip=client_ip(),
            user_agent=request.headers.get("User-Agent", "")[:500],
            device_cookie=request.cookies.get(DEVICE_COOKIE, ""),
        ),
        as_service=True,
    )
    if reply.status == auth_pb2.LOGIN_STATUS_OK:
        _start_session(reply)
        return _after_login(reply)
    if reply.status in (auth_pb2.LOGIN_STATUS_LOCKED, auth_pb2.LOGIN_STATUS_THROTTLED):
        session.pop("challenge", None)
        flash(_login_failure(reply.status), "error")
        return redirect(url_for("account.login"))
    return render_template("login_totp.html", error=_("The code is wrong or was already used.")), 401


@bp.post("/logout")
def logout() -> Response:
    """End the session in auth, then forget it here."""
    token = session.get("sid")
    if token:
        call(backends().auth.Logout, auth_pb2.LogoutRequest(session_token=token), as_service=True)
    session.clear()
    flash(_("You are logged out."), "info")
    return redirect(url_for("account.login"))


@bp.route("/forgot", methods=["GET", "POST"])
def forgot() -> Response | str:
    """Ask for a reset link; the answer is the same whether or not the login exists."""
    if request.method == "GET":
        return render_template("forgot.html")
    login_id = request.form.get("login", "").strip()
    if login_id:
        call(
            backends().auth.ForgotPassword,
            auth_pb2.ForgotPasswordRequest(login=login_id, source_ip=client_ip()),
            as_service=True,
        )
    flash(
        _(
            "If this login ID exists and may log in, a link to set a new password was mailed to its address. "
            "The link works once."
        ),
        "info",
    )
    return redirect(url_for("account.login"))


@bp.route("/reset/<token>", methods=["GET", "POST"])
def reset(token: str) -> Response | tuple[str, int]:
    """Set a password from a reset or invitation link."""
    error = None
    if request.method == "POST":
        new = request.form.get("new_password", "")
        if new != request.form.get("confirm_password", ""):
            error = _("The two passwords differ.")
        else:
            try:
                call(
                    backends().auth.ResetPassword,
                    auth_pb2.ResetPasswordRequest(token=token, new_password=new),
                    as_service=True,
                )
            except BackendError as exc:
                if exc.code not in _FORM_ERRORS:
                    raise
                error = exc.message
            else:
                session.clear()
                flash(_("Your password is set. Log in with it."), "info")
                return redirect(url_for("account.login"))
    return render_template("reset.html", error=error), 400 if error else 200


@bp.route("/account/password", methods=["GET", "POST"])
def password() -> Response | str:
    """Change the password, giving the current one; the user's other sessions end."""
    error = None
    if request.method == "POST":
        new = request.form.get("new_password", "")
        if new != request.form.get("confirm_password", ""):
            error = _("The two passwords differ.")
        else:
            try:
                reply = call(
                    backends().auth.ChangePassword,
                    auth_pb2.ChangePasswordRequest(
                        session_token=session["sid"],
                        current_password=request.form.get("current_password", ""),
                        new_password=new,
                    ),
                    as_service=True,
                )
            except BackendError as exc:
                if exc.code not in _FORM_ERRORS:
                    raise
                error = exc.message
                if exc.code == grpc.StatusCode.PERMISSION_DENIED:
                    error = _("The current password is wrong.")
            else:
                flash(
                    _("Your password was changed. Other sessions ended: %(count)d.", count=reply.revoked_sessions),
                    "info",
                )
                return redirect(url_for("account.profile"))
    return render_template("password.html", error=error), 400 if error else 200


def _qr_svg(uri: str) -> Markup:
    # segno writes plain SVG paths (no script); it is our own markup, so it may go in unescaped.
    return Markup(segno.make(uri, error="m").svg_inline(scale=4, dark="#111", light="#fff"))  # nosec B704 # noqa: S704


@bp.get("/account/2fa")
def totp() -> str:
    """Two-step verification: the QR code of a new secret to confirm, or the switch to turn it off."""
    if current_user.user.totp_enabled:
        return render_template("totp.html", enabled=True)
    reply = call(
        backends().auth.BeginTotpSetup,
        auth_pb2.BeginTotpSetupRequest(session_token=session["sid"]),
        as_service=True,
    )
    return render_template("totp.html", enabled=False, secret=reply.secret, qr=_qr_svg(reply.provisioning_uri))


@bp.post("/account/2fa/confirm")
def totp_confirm() -> Response | str:
    """Turn two-step verification on with a first code; show the recovery codes, once."""
    try:
        reply = call(
            backends().auth.ConfirmTotp,
            auth_pb2.ConfirmTotpRequest(session_token=session["sid"], code=request.form.get("code", "").strip()),
            as_service=True,
        )
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("The code does not match. Check the device's clock and type the current code."), "error")
        return redirect(url_for("account.totp"))
    if reply.session_token:
        # The set-up-only session ended in auth; this is the user's full session, under a new id.
        session["sid"] = reply.session_token
    return render_template("recovery_codes.html", codes=list(reply.recovery_codes))


@bp.post("/account/2fa/disable")
def totp_disable() -> Response:
    """Turn two-step verification off, giving the password."""
    try:
        call(
            backends().auth.DisableTotp,
            auth_pb2.DisableTotpRequest(session_token=session["sid"], password=request.form.get("password", "")),
            as_service=True,
        )
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        message = _("The password is wrong.") if exc.code == grpc.StatusCode.PERMISSION_DENIED else exc.message
        flash(message, "error")
    else:
        flash(_("Two-step verification is off."), "info")
    return redirect(url_for("account.totp"))


@bp.get("/account")
def profile() -> str:
    """Who you are, your language, and links to password and two-step settings."""
    return render_template("profile.html", time_zones=offered_zones(), viewer_zone=viewer_zone())


@bp.get("/account/sessions")
def sessions() -> str:
    """The user's live sessions: when and where each began and was last used; this one is marked."""
    reply = call(
        backends().auth.ListSessions, auth_pb2.ListSessionsRequest(session_token=session["sid"]), as_service=True
    )
    return render_template("sessions.html", sessions=list(reply.sessions))


@bp.post("/account/sessions/<id:session_id>/revoke")
def revoke_session(session_id: int) -> Response:
    """End one of the user's own sessions (another browser or device); auth refuses anyone else's."""
    try:
        call(
            backends().auth.RevokeSession,
            auth_pb2.RevokeSessionRequest(session_token=session["sid"], session_id=session_id),
            as_service=True,
        )
    except BackendError as exc:
        if exc.code not in (*_FORM_ERRORS, grpc.StatusCode.NOT_FOUND):
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
    else:
        flash(_("The session was ended."), "info")
    return redirect(url_for("account.sessions"))


@bp.post("/language")
def set_language() -> Response:
    """Remember the chosen language in a cookie for a year."""
    language = request.form.get("language", "")
    response = redirect(safe_next(request.form.get("next")) or url_for("gateway.home"))
    if language in LANGUAGES:
        response.set_cookie(
            LANGUAGE_COOKIE, language, max_age=365 * 86400, path="/", secure=True, httponly=True, samesite="Lax"
        )
    return response


@bp.post("/account/time-zone")
def set_time_zone() -> Response:
    """Remember the time zone this person reads times in, in a cookie for a year."""
    chosen = request.form.get("time_zone", "").strip()
    response = redirect(url_for("account.profile"))
    if zone_or_none(chosen) is None:
        flash(_("Unknown time zone %(zone)s: choose one from the menu.", zone=chosen or "—"), "error")
        return response
    response.set_cookie(
        TIME_ZONE_COOKIE, chosen, max_age=365 * 86400, path="/", secure=True, httponly=True, samesite="Lax"
    )
    flash(_("Times are shown in %(zone)s.", zone=chosen), "info")
    return response
