"""Fresh databases for tests on the session's PostgreSQL: empty, or a copy of one with every schema migrated."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import psycopg

from services.auth import service as auth_service
from services.bounce import service as bounce_service
from services.campaigns import service as campaigns_service
from services.common import db
from services.lists import service as lists_service
from services.sender import service as sender_service

SERVICES = (auth_service, lists_service, campaigns_service, bounce_service, sender_service)


@contextlib.contextmanager
def fresh_database(server_url: str, template: str | None = None) -> Iterator[str]:
    """A new database (a copy of `template` if given) for as long as the block runs, then dropped."""
    name = f"mbtest_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield psycopg.conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def migrated_template(server_url: str) -> Iterator[str]:
    """A database holding every service's schema as its migrations leave it, by name, for copying."""
    with fresh_database(server_url) as url:

        async def migrate_all() -> None:
            for service in SERVICES:
                await db.migrate(url, service.SCHEMA, service.SQL_DIR)

        asyncio.run(migrate_all())
        yield psycopg.conninfo.conninfo_to_dict(url)["dbname"]
