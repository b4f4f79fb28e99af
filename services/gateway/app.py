"""The gateway's Flask application: the web console, an app factory with its blueprints and security."""

from __future__ import annotations

from typing import Any

import grpc
from flask import Flask, render_template
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter, Map

from services.gateway import (
    account,
    admin,
    audience_fields,
    audience_imports,
    audience_privacy,
    audience_segments,
    audience_signup,
    audience_subscribers,
    audience_suppression,
    domains,
    mail,
    outbox,
    public,
    tracked,
    views,
)
from services.gateway.clients import BackendError, Backends
from services.gateway.config import Config
from services.gateway.i18n import init_i18n
from services.gateway.labels import init_labels
from services.gateway.security import init_security

# The services' ids are PostgreSQL bigints, carried as protobuf int64.
INT64_MAX = 2**63 - 1


class IdConverter(IntegerConverter):
    """`<id:...>` in a route: digits that fit an int64 id; a larger number matches no route, so it is a 404."""

    def __init__(self, map: Map) -> None:
        super().__init__(map, max=INT64_MAX)


# Status codes a refused call turns into when a view does not handle it itself.
_HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
}


def _error_page(status: int, message: str) -> tuple[str, int]:
    return render_template("error.html", status=status, message=message), status


def _http_error(exc: HTTPException) -> Any:
    if exc.code is None or exc.code < 400:
        return exc
    messages = {
        403: _("Your role does not allow this."),
        404: _("This page does not exist, or it belongs to another organisation."),
        405: _("This address does not accept that kind of request."),
        503: _("A mailblast service is not answering. Try again in a moment."),
    }
    return _error_page(exc.code, messages.get(exc.code, exc.description or ""))


def _backend_error(exc: BackendError) -> Any:
    status = _HTTP_STATUS.get(exc.code, 500)
    if status == 404:
        return _http_error_for(404)
    if status == 403:
        return _http_error_for(403)
    return _error_page(status, exc.message)


def _http_error_for(status: int) -> Any:
    from werkzeug.exceptions import default_exceptions

    return _http_error(default_exceptions[status]())


def _csrf_error(exc: CSRFError) -> Any:
    return _error_page(400, _("The form was stale or not sent by this console (CSRF check). Reload and retry."))


def create_app(config: dict[str, Any] | None = None, settings: Config | None = None) -> Flask:
    """Build the gateway; `settings` are the gateway's (from the environment unless given), `config` Flask's."""
    app = Flask(__name__)
    settings = settings or Config.from_env()
    app.config.from_mapping(JSON_AS_ASCII=False, SECRET_KEY=settings.flask_secret())
    app.config["MAILBLAST"] = settings
    # Every route naming a row by number uses <id:...>, so a number past int64 is a 404 rather than a
    # protobuf error (500) in the view.
    app.url_map.converters["id"] = IdConverter
    if settings.trusted_proxies:
        # Behind an Ingress every TCP peer is the proxy: without this all logins would share its address
        # (one stranger's failures would throttle everyone). Only the hops the operator vouches for count.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    init_security(app)
    if config:
        app.config.update(config)
    app.extensions["mailblast_backends"] = Backends(settings)
    csrf = CSRFProtect(app)
    # Two POSTs come without a session by design, so there is no CSRF token to check: RFC 8058's
    # one-click unsubscribe is sent by mail providers with no cookies and no page, and an embedded
    # signup snippet posts from the subscriber's browser on another site. Neither needs an ambient
    # credential: the first is authorised by its signed token, the second only creates a pending
    # subscriber who must confirm by mail. Every other POST, public ones included, keeps the check.
    csrf.exempt(public.one_click)
    csrf.exempt(public.signup_submit)
    init_i18n(app)
    init_labels(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(mail.bp)
    # The audience pages, one blueprint per sub-domain of lists.
    for audience in (audience_fields, audience_imports, audience_subscribers, audience_privacy, audience_segments,
                     audience_suppression, audience_signup):  # fmt: skip
        app.register_blueprint(audience.bp)
    app.register_blueprint(domains.bp)
    app.register_blueprint(public.bp)
    app.register_blueprint(tracked.bp)
    if settings.dev_outbox_dir:
        app.register_blueprint(outbox.bp)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(BackendError, _backend_error)
    app.jinja_env.globals["dev_outbox"] = bool(settings.dev_outbox_dir)
    return app
