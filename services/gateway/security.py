"""The console's security core: who is logged in (a server-side auth session per request), roles, headers."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

import grpc
from flask import Flask, Response, abort, flash, g, redirect, request, session, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import LoginManager, UserMixin, current_user
from mailblast.v1 import auth_pb2

from services.common.identity import Principal
from services.gateway.clients import BackendError, backends, call

# The console's cookies: Secure, HttpOnly, SameSite=Lax, and __Host- so no subdomain can set or scope them.
SESSION_COOKIE = "__Host-mailblast-session"
LANGUAGE_COOKIE = "__Host-mailblast-lang"
TIME_ZONE_COOKIE = "__Host-mailblast-tz"
# Auth's signed device cookie: this browser logged in before, so strangers' lockouts do not stop it.
# SameSite=Strict: only the console's own login form needs it.
DEVICE_COOKIE = "__Host-mailblast-device"
DEVICE_COOKIE_SECONDS = 400 * 86400
LANGUAGES = ("en", "ja")

# No script but our own files, no plugins, no framing of the console, forms only to ourselves.
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# A campaign preview or a caught message: a unique opaque origin (sandbox without allow-scripts or
# allow-same-origin), so its script can never run, let alone in the console's origin.
PREVIEW_CSP = (
    "sandbox; default-src 'none'; img-src https: data:; style-src 'unsafe-inline'; font-src https: data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"
# Pages whose address holds a secret from a mail (a confirmation, unsubscribe or reset token) send only
# the bare origin as Referer: no request from them, to another site or to this console's own static
# files (and whatever logs their Referer), carries the token. Not "no-referrer": Chromium then sends the
# page's own form with no Referer (and Origin: null), and the strict Referer check Flask-WTF makes over
# HTTPS (WTF_CSRF_SSL_STRICT, kept) refuses it. Nor a Fetch Metadata check (Sec-Fetch-Site) in place of
# Referer: a browser without Sec-Fetch-* would leave only Origin to check, which no-referrer nulls too.
# The origin policy loosens no check and works in every browser.
MAIL_LINK_REFERRER_POLICY = "strict-origin"
# The endpoints whose address holds such a token: every answer from them has that policy, the page after
# a form was sent and error pages included, as each is a document whose address is the token's.
MAIL_LINK_ENDPOINTS = {
    "public.unsubscribe_page",
    "public.one_click",
    "public.unsubscribe_choose",
    "public.confirm_page",
    "public.confirm_submit",
    "account.reset",
}

# Endpoints reachable without a session.
PUBLIC_ENDPOINTS = {
    "static",
    "gateway.healthz",
    "account.login",
    "account.login_totp",
    "account.forgot",
    "account.reset",
    "account.set_language",
    # Subscribers' pages (services/gateway/public.py): the link's token or the form id is the credential.
    "public.unsubscribe_page",
    "public.one_click",
    "public.unsubscribe_choose",
    "public.signup_page",
    "public.signup_submit",
    "public.confirm_page",
    "public.confirm_submit",
    # Tracked links and the open pixel (services/gateway/tracked.py): the signed token is the credential.
    "tracked.opened",
    "tracked.clicked",
}
# Endpoints a set-up-only session (the organisation requires TOTP, the user has none) may use.
SETUP_ENDPOINTS = {"account.totp", "account.totp_confirm", "account.logout"}

ROLE_SCOPE = {"viewer": "read", "editor": "send", "admin": "admin"}


class ConsoleUser(UserMixin):
    """The logged-in user of this request, as auth's GetSession described them."""

    def __init__(self, reply: auth_pb2.GetSessionResponse) -> None:
        self.user = reply.user
        self.session_info = reply.session
        self.principal = Principal(
            organization_id=reply.principal.organization_id,
            user_id=reply.principal.user_id,
            scopes=tuple(reply.principal.scopes),
            role=reply.principal.role,
        )
        self.setup_only = reply.status == auth_pb2.SESSION_STATUS_TOTP_SETUP_REQUIRED

    def get_id(self) -> str:
        """Flask-Login's user id."""
        return str(self.user.id)

    def can(self, scope: str) -> bool:
        """True when the user's role grants the scope (read, send, admin)."""
        return not self.setup_only and self.principal.has_scope(scope)


def _load_from_session(_request: Any) -> ConsoleUser | None:
    token = session.get("sid")
    if not token:
        return None
    try:
        reply = call(backends().auth.GetSession, auth_pb2.GetSessionRequest(session_token=token), as_service=True)
    except BackendError as exc:
        if exc.code == grpc.StatusCode.UNAVAILABLE:
            abort(503)
        raise
    if reply.status in (auth_pb2.SESSION_STATUS_VALID, auth_pb2.SESSION_STATUS_TOTP_SETUP_REQUIRED):
        user = ConsoleUser(reply)
        g.principal = user.principal
        return user
    g.session_end = reply.status
    return None


def _duration(seconds: int) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = seconds // 60
        return ngettext("%(num)d minute", "%(num)d minutes", minutes)
    return ngettext("%(num)d second", "%(num)d seconds", seconds)


def end_session_message(status: int, idle_seconds: int) -> str | None:
    """What to tell a user whose session ended without them logging out."""
    if status == auth_pb2.SESSION_STATUS_IDLE_TIMEOUT:
        return _("You were logged out after %(duration)s of inactivity.", duration=_duration(idle_seconds))
    if status == auth_pb2.SESSION_STATUS_ABSOLUTE_TIMEOUT:
        return _("Your session reached its maximum length. Please log in again.")
    if status == auth_pb2.SESSION_STATUS_REVOKED:
        return _("Your session was ended (logged out elsewhere, password changed or account disabled).")
    return None


def _unauthorized() -> Response:
    status = g.get("session_end")
    idle = int(session.get("idle", 0))
    if session.get("sid"):
        # The auth session is over: drop it and everything tied to it (a pending TOTP challenge stays).
        session.clear()
    message = end_session_message(status, idle) if status else None
    if message:
        flash(message, "warning")
    target = request.full_path if request.method == "GET" else None
    return redirect(url_for("account.login", next=target.rstrip("?") if target else None))


def safe_next(target: str | None) -> str | None:
    """A same-site path to go back to after login, or None (never another site: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def require_login() -> Response | None:
    """Before every request: a session is needed everywhere but the public pages."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    if not current_user.is_authenticated:
        return _unauthorized()
    if current_user.setup_only and request.endpoint not in SETUP_ENDPOINTS:
        flash(_("Your organisation requires two-step verification: set it up to continue."), "warning")
        return redirect(url_for("account.totp"))
    return None


def requires(scope: str) -> Callable:
    """Refuse (403) a view to users whose role lacks the scope: viewer read, editor send, admin admin."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return _unauthorized()
            if not current_user.can(scope):
                abort(403)
            return view(*args, **kwargs)

        wrapped.required_scope = scope
        return wrapped

    return decorate


def add_security_headers(response: Response) -> Response:
    """Headers on every response: CSP, no sniffing, no framing, Referrer-Policy, HSTS over HTTPS, no caching."""
    response.headers.setdefault("Content-Security-Policy", CONSOLE_CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    mail_link = request.endpoint in MAIL_LINK_ENDPOINTS
    response.headers.setdefault(
        "Referrer-Policy", MAIL_LINK_REFERRER_POLICY if mail_link else "strict-origin-when-cross-origin"
    )
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    if request.endpoint != "static":
        # Pages show one organisation's data: never kept by the browser or a shared cache.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_security(app: Flask) -> LoginManager:
    """Session cookie settings, Flask-Login with the auth session, the login gate and the headers."""
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=False,
        # The CSRF token lives as long as the console session; a new one comes with every login.
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SSL_STRICT=True,
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,
    )
    manager = LoginManager()
    manager.init_app(app)
    # Flask-Login's own "remember me" and session-id checks are not used: auth's session is the truth.
    manager.session_protection = None
    manager.request_loader(_load_from_session)
    manager.unauthorized_handler(_unauthorized)
    app.before_request(require_login)
    app.after_request(add_security_headers)
    return manager
