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
from services.auth.clock import Clock
from services.auth.config import Config as AuthConfig
from services.campaigns import service as campaigns_service
from services.campaigns.config import Config as CampaignsConfig
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.gateway.app import create_app
from services.gateway.config import Config as GatewayConfig
from services.lists import service as lists_service
from services.lists.config import Config as ListsConfig
from services.sender import service as sender_service
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


class Web:
    """A Flask test client over HTTPS, called from a thread: the services run on the test's event loop."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    async def get(self, path: str, **kwargs: Any) -> TestResponse:
        """GET over HTTPS."""
        # Buffered: a streamed body (the CSV export) is read here, inside the request's context.
        kwargs.setdefault("buffered", True)
        return await asyncio.to_thread(self.client.get, path, base_url="https://localhost", **kwargs)

    async def post(self, path: str, data: dict | None = None, csrf: bool = True, **kwargs: Any) -> TestResponse:
        """POST a form over HTTPS, with this session's CSRF token unless told not to."""
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf_token", await self.csrf_token())
        # Browsers send the page's address as Referer on same-origin posts; Flask-WTF checks it over HTTPS.
        headers = {"Referer": "https://localhost/", **kwargs.pop("headers", {})}
        return await asyncio.to_thread(
            self.client.post, path, data=form, base_url="https://localhost", headers=headers, **kwargs
        )

    async def csrf_token(self) -> str:
        """The CSRF token of this session, read from a form as a browser would."""
        page = await self.get("/login")
        found = _CSRF.search(page.get_data(as_text=True))
        assert found, page.get_data(as_text=True)
        return found.group(1)

    async def login(self, login: str = OWNER, password: str = PASSWORD) -> TestResponse:
        """Submit the login form."""
        return await self.post("/login", {"login": login, "password": password})

    def cookie(self, name: str):
        """A cookie the console set."""
        return self.client.get_cookie(name, domain="localhost")


async def start_console(
    database_url: str,
    nats_url: str,
    internal_key: bytes,
    tls_files: tuple[Path, Path],
    dkim: DkimKeys,
    outbox: Path,
    clock: Clock | None = None,
    **auth_overrides: Any,
) -> Console:
    """Start auth (these settings, this clock), lists, campaigns, a sender relaying to a catcher; build the gateway."""
    signer = IdentitySigner(internal_key)
    catcher = SmtpCatcher(*tls_files, store_dir=outbox)
    catcher.start()
    auth_config = AuthConfig(
        database_url,
        internal_key,
        nats_url,
        (Fernet.generate_key(),),
        grpc_bind="127.0.0.1:0",
        console_url="https://localhost",
    )
    auth = await auth_service.start(dataclasses.replace(auth_config, **auth_overrides), clock)
    auth_addr = f"127.0.0.1:{auth.grpc_port}"
    lists = await lists_service.start(
        ListsConfig(database_url, nats_url, internal_key, grpc_bind="127.0.0.1:0", auth_addr=auth_addr)
    )
    lists_addr = f"127.0.0.1:{lists.grpc_port}"
    campaigns = await campaigns_service.start(
        CampaignsConfig(
            database_url, nats_url, internal_key, lists_addr=lists_addr, auth_addr=auth_addr, grpc_bind="127.0.0.1:0"
        )
    )
    sender = await sender_service.start(
        sender_config(database_url, nats_url, internal_key, catcher.port, tls_files[0], dkim)
    )
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        boot = await auth_pb2_grpc.AuthServiceStub(channel).Bootstrap(
            auth_pb2.BootstrapRequest(
                organization_name="Acme", admin_login=OWNER, admin_email="alice@example.org", admin_password=PASSWORD
            ),
            metadata=[(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service="test")))],
        )
    settings = GatewayConfig(
        auth_addr=auth_addr,
        lists_addr=lists_addr,
        campaigns_addr=f"127.0.0.1:{campaigns.grpc_port}",
        internal_key=internal_key,
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
