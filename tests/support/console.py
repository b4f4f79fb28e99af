"""The web console on real services: auth, lists, campaigns and a sender in this process, the gateway app on top."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from mailblast.v1 import auth_pb2, auth_pb2_grpc
from werkzeug.test import TestResponse

from dev.catcher import SmtpCatcher
from services.auth import passwords
from services.auth import service as auth_service
from services.auth.config import Config as AuthConfig
from services.campaigns import service as campaigns_service
from services.campaigns.config import Config as CampaignsConfig
from services.common.clock import Clock
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.gateway.app import create_app
from services.gateway.config import Config as GatewayConfig
from services.lists import service as lists_service
from services.lists.config import Config as ListsConfig
from services.sender import service as sender_service
from tests.support.mtls import default_pki
from tests.support.nats import NatsServer
from tests.support.stack import DkimKeys, sender_config

PASSWORD = "violet-otter-47-lantern"
OWNER = "alice"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Console:
    """Running services, the gateway app, and the bootstrap organisation with its owner."""

    auth: auth_service.Running
    lists: lists_service.Running
    campaigns: campaigns_service.Running
    sender: sender_service.Running
    app: Flask
    catcher: SmtpCatcher
    database_url: str
    organization_id: int
    owner_id: int
    api_token: str
    channels: list[grpc.aio.Channel] = field(default_factory=list)

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
        channel = default_pki().channel(port, identity)
        self.channels.append(channel)
        return channel

    def client(self) -> Web:
        """A new browser-like client of the console (its own cookies)."""
        return Web(self.app.test_client())

    async def stop(self) -> None:
        """Stop everything."""
        self.app.extensions["mailblast_backends"].close()
        for channel in self.channels:
            await channel.close()
        await self.sender.stop(grace=5.0)
        for running in (self.campaigns, self.lists, self.auth):
            await running.stop()
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
    **auth_overrides: Any,
) -> Console:
    """Start auth (with these settings), lists, campaigns and a sender relaying to a catcher; build the gateway.

    Mailed links (reset, confirmation, unsubscribe) point at `public_url`, where the console is served.
    Auth's lockouts, lists' double opt-in limits and campaigns' schedules go by `clock` (tests move it; the
    system's by default).
    """
    signer = IdentitySigner(internal_key)
    pki = default_pki()
    catcher = SmtpCatcher(*tls_files, store_dir=outbox)
    catcher.start()
    auth_config = AuthConfig(
        database_url=database_url,
        internal_key=internal_key,
        nats_url=nats.url,
        totp_keys=(Fernet.generate_key(),),
        grpc_tls=pki.tls("auth"),
        grpc_bind="127.0.0.1:0",
        console_url=public_url,
        nats_creds_file=nats.creds("auth"),
    )
    auth = await auth_service.start(dataclasses.replace(auth_config, **auth_overrides), clock=clock)
    auth_addr = f"127.0.0.1:{auth.grpc_port}"
    lists = await lists_service.start(
        ListsConfig(
            database_url=database_url,
            nats_url=nats.url,
            internal_key=internal_key,
            grpc_tls=pki.tls("lists"),
            grpc_bind="127.0.0.1:0",
            auth_addr=auth_addr,
            public_url=f"{public_url}/",
            nats_creds_file=nats.creds("lists"),
        ),
        clock=clock,
    )
    lists_addr = f"127.0.0.1:{lists.grpc_port}"
    campaigns = await campaigns_service.start(
        CampaignsConfig(
            database_url=database_url,
            nats_url=nats.url,
            internal_key=internal_key,
            lists_addr=lists_addr,
            grpc_tls=pki.tls("campaigns"),
            auth_addr=auth_addr,
            grpc_bind="127.0.0.1:0",
            nats_creds_file=nats.creds("campaigns"),
        ),
        clock=clock,
    )
    sender = await sender_service.start(
        sender_config(
            database_url,
            nats,
            internal_key,
            catcher.port,
            tls_files[0],
            dkim,
            unsubscribe_url=f"{public_url}/u/",
            tracking_url=f"{public_url}/t/",
        )
    )
    async with pki.channel(auth_addr, "dev-run") as channel:
        boot = await auth_pb2_grpc.AuthServiceStub(channel).Bootstrap(
            auth_pb2.BootstrapRequest(
                organization_name="Acme", admin_login=OWNER, admin_email="alice@example.org", admin_password=PASSWORD
            ),
            metadata=[(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service="dev-run"), "auth"))],
        )
    settings = GatewayConfig(
        auth_addr=auth_addr,
        lists_addr=lists_addr,
        campaigns_addr=f"127.0.0.1:{campaigns.grpc_port}",
        internal_key=internal_key,
        grpc_tls=pki.tls("gateway"),
        dev_outbox_dir=str(outbox),
        dev_dkim_records={k.decode(): v.decode() for k, v in dkim.records.items()},
    )
    app = create_app({"TESTING": True}, settings=settings)
    return Console(
        auth, lists, campaigns, sender, app, catcher, database_url, boot.organization.id, boot.user.id, boot.api_token
    )


async def poll(check, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Await `check()` (a coroutine function) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


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
