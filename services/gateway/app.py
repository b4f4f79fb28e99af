"""The gateway's Flask application: an app factory, its blueprints and the headers every response carries."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response

from services.gateway import views

# Sent on every response: no MIME sniffing, never framed by another site, no full URLs in Referer.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


def _add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the gateway application; `config` overrides settings (tests pass TESTING=True)."""
    app = Flask(__name__)
    app.config.from_mapping(JSON_AS_ASCII=False)
    if config:
        app.config.update(config)
    app.register_blueprint(views.bp)
    app.after_request(_add_security_headers)
    return app
