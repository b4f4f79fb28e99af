"""The web console on real services: auth, lists, campaigns and a sender in this process, the gateway app on top."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dev.catcher import SmtpCatcher
from services.auth import passwords
from services.auth import service as auth_service
from services.campaigns import service as campaigns_service
from services.common.clock import Clock
from services.gateway.app import create_app
from services.gateway.config import Config as GatewayConfig
from services.lists import service as lists_service
from services.sender import service as sender_service
from tests.support.mtls import default_pki
from tests.support.nats import NatsServer
from tests.support.stack import Bootstrap, DkimKeys, Stack, start_stack

PASSWORD = "violet-otter-47-lantern"
OWNER = "alice"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Console:
    """The services (the one stack builder's, without bounce), the gateway app, the bootstrap organisation."""

    stack: Stack
    app: Flask
    catcher: SmtpCatcher
    database_url: str

    @property
    def auth(self) -> auth_service.Running:
        """The auth service."""
        return self.stack.auth

    @property
    def lists(self) -> lists_service.Running:
        """The lists service."""
        return self.stack.lists

    @property
    def campaigns(self) -> campaigns_service.Running:
        """The campaigns service."""
        return self.stack.campaigns

    @property
    def sender(self) -> sender_service.Running:
        """The one sender."""
        return self.stack.senders[0]

    @property
    def organization_id(self) -> int:
        """The bootstrap organisation."""
        return self.stack.organization_id

    @property
    def owner_id(self) -> int:
        """The bootstrap owner's user id."""
        return self.stack.owner_id

    @property
    def api_token(self) -> str:
        """The bootstrap owner's API token."""
        return self.stack.token

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run SQL (to set up users quickly, or age sessions without waiting)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def add_user(self, login: str, role: str, organization_id: int | None = None, password: str = PASSWORD) -> int:
        """A user with a password, straight into auth's tables (the invitation flow is auth's own tests')."""
        digest = passwords.hash_password(passwords.normalize(password))
        rows = self.sql(
            "INSERT INTO auth.users (organization_id, login, email, role, password_hash) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (organization_id or self.organization_id, login, f"{login}@example.org", role, digest),
        )
        return rows[0][0]

    def add_organization(self, name: str) -> int:
        """Another organisation (Bootstrap makes only the first)."""
        return self.sql("INSERT INTO auth.organizations (name) VALUES (%s) RETURNING id", (name,))[0][0]

    def channel(self, port: int, identity: str = "cli") -> grpc.aio.Channel:
        """A mutual-TLS channel to one of the services, presenting the certificate of `identity`."""
        return self.stack.channel(port, identity)

    def client(self) -> Web:
        """A new browser-like client of the console (its own cookies)."""
        return Web(self.app.test_client())

    async def stop(self) -> None:
        """Stop everything."""
        self.app.extensions["mailblast_backends"].close()
        await self.stack.stop()
        self.catcher.stop()


ORIGIN = "https://localhost"
# Chromium's policy when a page sets none (or only values it does not know).
DEFAULT_REFERRER_POLICY = "strict-origin-when-cross-origin"
REFERRER_POLICIES = {
    "no-referrer",
    "no-referrer-when-downgrade",
    "same-origin",
    "origin",
    "strict-origin",
    "origin-when-cross-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
}


@dataclass(frozen=True)
class Page:
    """The document a browser tab shows: its address, the Referrer-Policy it came with, its HTML."""

    url: str
    referrer_policy: str
    html: str


def referrer_policy(header: str | None) -> str:
    """The policy a browser applies for a Referrer-Policy header: the last value it knows, else its default."""
    known = [value.strip().lower() for value in (header or "").split(",") if value.strip().lower() in REFERRER_POLICIES]
    return known[-1] if known else DEFAULT_REFERRER_POLICY


def form_submission_headers(page: Page) -> dict[str, str]:
    """What Chromium adds when a form on `page` is submitted to the page's own origin (Fetch and Referrer
    Policy specs): Origin is "null" under no-referrer, Referer follows the page's policy, Sec-Fetch-* say
    a person navigated within the site."""
    headers = {
        "Origin": "null" if page.referrer_policy == "no-referrer" else ORIGIN,
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": "document",
        "Sec-Fetch-User": "?1",
    }
    if page.referrer_policy in ("origin", "strict-origin"):
        headers["Referer"] = f"{ORIGIN}/"
    elif page.referrer_policy != "no-referrer":
        headers["Referer"] = page.url.split("#", 1)[0]
    return headers


class Web:
    """A Flask test client over HTTPS that sends what Chromium sends; called from a thread, as the services
    run on the test's event loop. It remembers the page it shows, and posts forms from that page."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.page: Page | None = None

    def _shown(self, path: str, response: TestResponse) -> None:
        # A browser replaces the page with every HTML document it gets; after a redirect it shows the target,
        # which the next form post opens first (see post). Downloads and JSON leave the page as it is.
        if 300 <= response.status_code < 400:
            self.page = None
        elif response.mimetype == "text/html":
            html = response.get_data(as_text=True)
            self.page = Page(ORIGIN + path, referrer_policy(response.headers.get("Referrer-Policy")), html)

    async def get(self, path: str, **kwargs: Any) -> TestResponse:
        """GET over HTTPS, as typing the address or following a link: the response becomes the page."""
        # Buffered: a streamed body (the CSV export) is read here, inside the request's context.
        kwargs.setdefault("buffered", True)
        response = await asyncio.to_thread(self.client.get, path, base_url=ORIGIN, **kwargs)
        self._shown(path, response)
        return response

    async def post(
        self, path: str, data: dict | None = None, csrf: bool = True, from_page: bool = True, **kwargs: Any
    ) -> TestResponse:
        """Submit a form over HTTPS from the page shown (the login page when none is), with the headers
        Chromium sends from that page and the page's CSRF token unless told not to. With from_page=False it
        is a POST no page made (a mail provider's robot): no Origin, Referer or Sec-Fetch-* at all."""
        form = dict(data or {})
        headers: dict[str, str] = {}
        if from_page:
            if self.page is None:
                await self.get("/login")
            assert self.page is not None
            if csrf and "csrf_token" not in form:
                found = _CSRF.search(self.page.html)
                form["csrf_token"] = found.group(1) if found else await self.csrf_token()
            headers = form_submission_headers(self.page)
        elif csrf:
            form.setdefault("csrf_token", await self.csrf_token())
        headers.update(kwargs.pop("headers", {}))
        response = await asyncio.to_thread(
            self.client.post, path, data=form, base_url=ORIGIN, headers=headers, **kwargs
        )
        self._shown(path, response)
        return response

    async def csrf_token(self) -> str:
        """The CSRF token of this session, read from the login form as a browser would."""
        page = await self.get("/login")
        found = _CSRF.search(page.get_data(as_text=True))
        assert found, page.get_data(as_text=True)
        return found.group(1)

    async def login(self, login: str = OWNER, password: str = PASSWORD) -> TestResponse:
        """Open the login page and submit its form."""
        await self.get("/login")
        return await self.post("/login", {"login": login, "password": password})

    def cookie(self, name: str):
        """A cookie the console set."""
        return self.client.get_cookie(name, domain="localhost")


async def start_console(
    database_url: str,
    nats: NatsServer,
    internal_key: bytes,
    tls_files: tuple[Path, Path],
    dkim: DkimKeys,
    outbox: Path,
    public_url: str = ORIGIN,
    clock: Clock | None = None,
    campaigns_overrides: dict | None = None,
    **auth_overrides: Any,
) -> Console:
    """Start auth (with these settings), lists, campaigns and a sender relaying to a catcher; build the gateway.

    Mailed links (reset, confirmation, unsubscribe) point at `public_url`, where the console is served.
    Auth's lockouts and sessions, lists' double opt-in limits and campaigns' schedules go by `clock` (tests
    move it; the system's by default).
    """
    catcher = SmtpCatcher(*tls_files, store_dir=outbox)
    catcher.start()
    stack = await start_stack(
        database_url, nats, internal_key, catcher.port, tls_files[0], dkim, bounces=0, clock=clock,
        auth_overrides={"console_url": public_url, **auth_overrides},
        lists_overrides={"public_url": f"{public_url}/"},
        sender_overrides={"unsubscribe_url": f"{public_url}/u/", "tracking_url": f"{public_url}/t/"},
        campaigns_overrides=campaigns_overrides,
        campaigns_options={"clock": clock} if clock is not None else None,
        bootstrap=Bootstrap("Acme", OWNER, "alice@example.org", PASSWORD),
    )  # fmt: skip
    settings = GatewayConfig(
        auth_addr=f"127.0.0.1:{stack.auth.grpc_port}",
        lists_addr=f"127.0.0.1:{stack.lists.grpc_port}",
        campaigns_addr=f"127.0.0.1:{stack.campaigns.grpc_port}",
        internal_key=internal_key,
        grpc_tls=default_pki().tls("gateway"),
        dev_outbox_dir=str(outbox),
        dev_dkim_records={k.decode(): v.decode() for k, v in dkim.records.items()},
    )
    app = create_app({"TESTING": True}, settings=settings)
    return Console(stack, app, catcher, database_url)


async def create_list(web: Web, name: str) -> int:
    """A new list's id, created through the console."""
    response = await web.post("/lists", {"name": name})
    assert response.status_code == 302, response.get_data(as_text=True)
    return int(response.location.rsplit("/", 1)[1])


async def create_campaign(web: Web, list_id: int, **fields) -> int:
    """A new draft's id, composed through the console for one list (fields override the defaults)."""
    form = {
        "name": "Spring sale",
        "list_ids": str(list_id),
        "from_name": "Acme",
        "from_address": "news@news.example.com",
        "subject": "Hello {{ name }}",
        "html_body": "<p>Hello {{ name }}</p>",
        "text_body": "Hello {{ name }}",
        **fields,
    }
    response = await web.post("/campaigns/new", form)
    assert response.status_code == 302, response.get_data(as_text=True)
    return int(response.location.rsplit("/", 1)[1])
