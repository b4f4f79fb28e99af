"""The gateway application without services: health, headers, config, the HTTPS redirect and small rules."""

from __future__ import annotations

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

from services.common.settings import ConfigError
from services.gateway.app import IdConverter, create_app
from services.gateway.config import Config
from services.gateway.security import safe_next
from services.gateway.server import bind_url, redirect_app
from tests.support.mtls import default_pki

SETTINGS = Config(
    auth_addr="127.0.0.1:1",
    lists_addr="127.0.0.1:2",
    campaigns_addr="127.0.0.1:3",
    internal_key=b"k" * 32,
    grpc_tls=default_pki().tls("gateway"),
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


@pytest.mark.parametrize(("method", "path"), [("GET", "/c/tok"), ("POST", "/c/tok"), ("GET", "/reset/tok")])
def test_pages_with_a_mailed_token_send_only_the_origin_as_referer(client: FlaskClient, method: str, path: str):
    # A page whose address holds a token from a mail (and the answer to its form, or an error) lets the
    # browser send only the origin as Referer: the token never travels, and the page's own form still
    # passes the strict same-origin Referer check.
    response = client.open(path, method=method, base_url="https://localhost")
    assert response.headers["Referrer-Policy"] == "strict-origin"


def test_every_id_in_a_route_must_fit_an_int64(app: Flask) -> None:
    # Each route naming a row by number takes only numbers an int64 id can be: one past it matches no
    # route (404) instead of failing in protobuf (500).
    numbered = [rule for rule in app.url_map.iter_rules() if rule._converters]
    assert len(numbered) > 30
    for rule in numbered:
        for name, converter in rule._converters.items():
            assert not isinstance(converter, IntegerConverter) or isinstance(converter, IdConverter), (rule, name)
    urls = app.url_map.bind("localhost")
    assert urls.match("/lists/9223372036854775807") == ("mail.list_detail", {"list_id": 9223372036854775807})
    for path in ("/lists/9223372036854775808", "/lists/99999999999999999999", "/campaigns/18446744073709551616"):
        with pytest.raises(NotFound):
            urls.match(path)


def test_translated_text_in_a_template_is_never_markup(app: Flask) -> None:
    # A template translating a value (not a literal) shows the value as text, whatever it holds; a
    # translation with values escapes them as well; the catalog's own text stays readable.
    label = '</select><button formaction="/users/2/role">x</button>'
    with app.test_request_context("/", headers={"Accept-Language": "ja"}):
        assert render_template_string("{{ _(label) }}", label=label) == (
            "&lt;/select&gt;&lt;button formaction=&#34;/users/2/role&#34;&gt;x&lt;/button&gt;"
        )
        assert render_template_string('{{ _("Address: %(email)s", email=e) }}', e="<b>a@b.jp</b>") == (
            "メールアドレス: &lt;b&gt;a@b.jp&lt;/b&gt;"
        )
        assert render_template_string("{{ ngettext(label, label, 2) }}", label="<i>") == "&lt;i&gt;"


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


def test_http_listener_redirects_to_the_configured_https_address() -> None:
    # The plain-HTTP port sends every request to the same path under the console's configured public
    # address with a permanent redirect, keeping the query; a Host header naming another site changes
    # nothing (no redirect to an address the client chose); only /healthz answers there (for probes).
    app = redirect_app("https://console.example.com:8443/")
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    app({"PATH_INFO": "/lists/3", "QUERY_STRING": "page=2", "HTTP_HOST": "console.example.com"}, start_response)
    assert seen["status"].startswith("308")
    assert seen["headers"]["Location"] == "https://console.example.com:8443/lists/3?page=2"
    app({"PATH_INFO": "//evil.example/x", "HTTP_HOST": "evil.example:80"}, start_response)
    assert seen["headers"]["Location"] == "https://console.example.com:8443//evil.example/x"
    app({"PATH_INFO": "/f/1 é".encode().decode("latin-1"), "HTTP_HOST": "evil.example"}, start_response)
    assert seen["headers"]["Location"] == "https://console.example.com:8443/f/1%20%C3%A9"
    assert b"ok" in b"".join(app({"PATH_INFO": "/healthz"}, start_response))
    assert bind_url("0.0.0.0", 8443) == "https://localhost:8443"
    assert bind_url("::1", 443) == "https://[::1]"


@pytest.mark.parametrize(
    ("target", "safe"),
    [("/campaigns", "/campaigns"), ("//evil.example/", None), ("https://evil.example/", None), ("/\\evil", None)],
)
def test_next_page_never_leaves_the_site(target: str, safe: str | None) -> None:
    # After login the console goes back only to one of its own paths: no open redirect.
    assert safe_next(target) == safe


def test_gateway_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GATEWAY_BIND picks the HTTPS address, GATEWAY_HTTP_BIND the redirecting one, GATEWAY_PUBLIC_URL the
    # https address it redirects to; service addresses, the internal key and the gRPC client certificate are
    # required; a malformed setting names its variable.
    monkeypatch.setenv("AUTH_ADDR", "a:1")
    monkeypatch.setenv("LISTS_ADDR", "l:2")
    monkeypatch.setenv("CAMPAIGNS_ADDR", "c:3")
    monkeypatch.setenv("MAILBLAST_INTERNAL_KEY", "k" * 32)
    for name, value in default_pki().env("gateway").items():
        monkeypatch.setenv(name, value)
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
    monkeypatch.delenv("GATEWAY_PUBLIC_URL", raising=False)
    assert Config.from_env().public_url == ""
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", "https://mail.example.com/")
    assert Config.from_env().public_url == "https://mail.example.com"
    for wrong in ("http://mail.example.com", "https://", "https://a@mail.example.com", "https://m.example:x/"):
        monkeypatch.setenv("GATEWAY_PUBLIC_URL", wrong)
        with pytest.raises(ConfigError, match="GATEWAY_PUBLIC_URL"):
            Config.from_env()
    monkeypatch.delenv("GATEWAY_PUBLIC_URL")
    monkeypatch.delenv("AUTH_ADDR")
    with pytest.raises(ConfigError, match="AUTH_ADDR"):
        Config.from_env()
    monkeypatch.setenv("AUTH_ADDR", "a:1")
    monkeypatch.delenv("MAILBLAST_TLS_KEY_FILE")
    with pytest.raises(ConfigError, match="MAILBLAST_TLS_KEY_FILE is required"):
        Config.from_env()
