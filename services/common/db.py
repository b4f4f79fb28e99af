"""PostgreSQL for a service: a pool bound to the service's own schema, and ordered SQL migrations."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from services.common import metrics
from services.common.log import get_logger

log = get_logger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _with_search_path(url: str, schema: str) -> str:
    return psycopg.conninfo.make_conninfo(url, options=f"-c search_path={schema}")


async def migrate(url: str, schema: str, sql_dir: Path) -> list[str]:
    """Apply the service's migrations (NNNN_name.sql) not yet applied, in order; return the ones applied."""
    files = sorted(p for p in sql_dir.iterdir() if _MIGRATION_NAME.match(p.name))
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=False) as conn:
        # One service may start several replicas at once: serialise their migrations.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"mailblast-migrate-{schema}",))
        # The schema is an identifier, not a value: psycopg's sql module quotes it.
        name = sql.Identifier(schema)
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations "
                "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(name)
        )
        cur = await conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(name))
        done = {row[0] for row in await cur.fetchall()}
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(name))
        for path in files:
            if path.name in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(name), (path.name,)
            )
            applied.append(path.name)
        await conn.commit()
    if applied:
        log.info("migrations applied", schema=schema, versions=applied)
    return applied


async def open_pool(url: str, schema: str, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    """Open a connection pool whose connections see only the service's schema by default."""
    # Each connection is checked as it is handed out (one empty round trip): after PostgreSQL restarts, the
    # pool replaces its dead connections instead of failing one piece of work per connection.
    pool = AsyncConnectionPool(
        _with_search_path(url, schema), min_size=min_size, max_size=max_size, open=False, timeout=30,
        check=AsyncConnectionPool.check_connection,
    )  # fmt: skip
    await pool.open(wait=True, timeout=30)
    metrics.POOLS.watch(schema, pool)
    return pool
