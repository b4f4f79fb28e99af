"""The gateway application without services: health, headers, config, the HTTPS redirect and small rules."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.common.config import ConfigError
from services.gateway.app import create_app
from services.gateway.config import Config
from services.gateway.security import safe_next
from services.gateway.server import redirect_app

SETTINGS = Config(
    auth_addr="127.0.0.1:1", lists_addr="127.0.0.1:2", campaigns_addr="127.0.0.1:3", internal_key=b"k" * 32
)


@pytest.fixture
def app() -> Flask:
    """A gateway application in testing mode (no service is called by these tests)."""
    return create_app({"TESTING": True}, settings=SETTINGS)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the gateway."""
    return app.test_client()


def test_healthz_answers_ok(client: FlaskClient) -> None:
    # A probe or the `make run` supervisor asks /healthz and gets 200 with a JSON status.
    response = client.get("/healthz", base_url="https://localhost")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/login", "/healthz", "/no-such-page", "/campaigns"])
def test_every_response_carries_security_headers(client: FlaskClient, path: str) -> None:
    # Every response, errors and redirects included, forbids sniffing, framing and inline script, limits
    # the Referer and, over HTTPS, sets HSTS.
    response = client.get(path, base_url="https://localhost")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_unknown_page_is_404_and_pages_need_login(client: FlaskClient) -> None:
    # A mistyped address is a plain 404; a console page without a session goes to the login page.
    assert client.get("/no-such-page", base_url="https://localhost").status_code == 404
    response = client.get("/lists", base_url="https://localhost")
    assert response.status_code == 302 and response.location == "/login?next=/lists"


def test_login_page_cookie_is_hardened(client: FlaskClient) -> None:
    # The first page sets the session cookie (it holds the CSRF token) with every protective flag.
    cookie = client.get("/login", base_url="https://localhost").headers["Set-Cookie"]
    assert cookie.startswith("__Host-mailblast-session=")
    assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"))


def test_post_without_csrf_token_is_refused(client: FlaskClient) -> None:
    # A cross-site form posting to the console carries no CSRF token: 400, nothing called.
    response = client.post("/login", data={"login": "a", "password": "b"}, base_url="https://localhost")
    assert response.status_code == 400


def test_http_listener_redirects_to_https() -> None:
    # The plain-HTTP port sends every request to the same path over HTTPS with a permanent redirect,
    # keeping the query; only /healthz answers there (for probes).
    app = redirect_app(8443)
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    app({"PATH_INFO": "/lists/3", "QUERY_STRING": "page=2", "HTTP_HOST": "console.example:8080"}, start_response)
    assert seen["status"].startswith("308")
    assert seen["headers"]["Location"] == "https://console.example:8443/lists/3?page=2"
    assert b"ok" in b"".join(app({"PATH_INFO": "/healthz"}, start_response))


@pytest.mark.parametrize(
    ("target", "safe"),
    [("/campaigns", "/campaigns"), ("//evil.example/", None), ("https://evil.example/", None), ("/\\evil", None)],
)
def test_next_page_never_leaves_the_site(target: str, safe: str | None) -> None:
    # After login the console goes back only to one of its own paths: no open redirect.
    assert safe_next(target) == safe


def test_gateway_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GATEWAY_BIND picks the HTTPS address, GATEWAY_HTTP_BIND the redirecting one; service addresses and
    # the internal key are required; a malformed bind names its variable.
    monkeypatch.setenv("AUTH_ADDR", "a:1")
    monkeypatch.setenv("LISTS_ADDR", "l:2")
    monkeypatch.setenv("CAMPAIGNS_ADDR", "c:3")
    monkeypatch.setenv("MAILBLAST_INTERNAL_KEY", "k" * 32)
    monkeypatch.delenv("GATEWAY_BIND", raising=False)
    monkeypatch.setenv("GATEWAY_HTTP_BIND", "0.0.0.0:8081")
    config = Config.from_env()
    assert (config.host, config.port, config.http_host, config.http_port) == ("127.0.0.1", 8080, "0.0.0.0", 8081)
    monkeypatch.setenv("GATEWAY_BIND", "[::1]:9091")
    assert (Config.from_env().host, Config.from_env().port) == ("::1", 9091)
    monkeypatch.setenv("GATEWAY_BIND", "localhost")
    with pytest.raises(ConfigError, match="GATEWAY_BIND"):
        Config.from_env()
    monkeypatch.setenv("GATEWAY_BIND", "127.0.0.1:0")
    monkeypatch.delenv("AUTH_ADDR")
    with pytest.raises(ConfigError, match="AUTH_ADDR"):
        Config.from_env()
