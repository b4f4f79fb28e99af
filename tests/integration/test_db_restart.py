"""A service's connection pool across a PostgreSQL restart: work goes on without an error."""

from __future__ import annotations

import signal

from dev.embedded import start_postgres
from services.common import db


async def test_the_pool_hands_out_live_connections_after_postgresql_restarts(tmp_path):
    # PostgreSQL dies at once (SIGQUIT: immediate shutdown, as `pg_ctl restart -m immediate`) and comes back
    # on the same port. The pool's connections all died with it; the next piece of work still gets a
    # working connection, and so does every one after, with no failure to retry.
    server = start_postgres(tmp_path / "pg", durable=False)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    pool = await db.open_pool(server.url, "public", min_size=3, max_size=3)
    try:
        for _ in range(3):
            async with pool.connection() as conn:
                assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
        server.process.send_signal(signal.SIGQUIT)
        server.process.wait(20)
        server = start_postgres(tmp_path / "pg", port=port, durable=False)
        for _ in range(6):
            async with pool.connection() as conn:
                assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
    finally:
        await pool.close()
        server.stop()
