"""The gateway application, through Flask's test client."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.common.config import ConfigError
from services.gateway.app import create_app
from services.gateway.config import Config


@pytest.fixture
def app() -> Flask:
    """A gateway application in testing mode."""
    return create_app({"TESTING": True})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the gateway."""
    return app.test_client()


def test_healthz_answers_ok(client: FlaskClient) -> None:
    # A probe or the `make run` supervisor asks /healthz and gets 200 with a JSON status.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_home_says_the_console_comes_later(client: FlaskClient) -> None:
    # A person opening the gateway's address sees a page saying the console is not there yet.
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "console comes later" in page
    assert "mailblast" in page


@pytest.mark.parametrize("path", ["/", "/healthz", "/no-such-page"])
def test_every_response_carries_security_headers(client: FlaskClient, path: str) -> None:
    # Every response, errors included, forbids sniffing and framing and limits the Referer.
    response = client.get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"


def test_unknown_page_is_404(client: FlaskClient) -> None:
    # A mistyped address is a plain 404, not a crash.
    assert client.get("/no-such-page").status_code == 404


def test_config_overrides_reach_the_app() -> None:
    # The factory applies the mapping it is given, as tests and the future console rely on.
    app = create_app({"TESTING": True, "SECRET_KEY": "x"})
    assert app.config["TESTING"] is True
    assert app.config["SECRET_KEY"] == "x"


def test_gateway_bind_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GATEWAY_BIND picks the address; without it the gateway stays on the loopback port 8080.
    monkeypatch.delenv("GATEWAY_BIND", raising=False)
    assert Config.from_env() == Config("127.0.0.1", 8080)
    monkeypatch.setenv("GATEWAY_BIND", "0.0.0.0:9090")
    assert Config.from_env() == Config("0.0.0.0", 9090)
    monkeypatch.setenv("GATEWAY_BIND", "[::1]:9091")
    assert Config.from_env() == Config("::1", 9091)


def test_malformed_gateway_bind_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bind without a port stops start-up with a message naming GATEWAY_BIND.
    monkeypatch.setenv("GATEWAY_BIND", "localhost")
    with pytest.raises(ConfigError, match="GATEWAY_BIND"):
        Config.from_env()
