"""Across a PostgreSQL restart: the pool hands out live connections, and no delivered outcome is lost."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from pathlib import Path

import psycopg

from dev.embedded import start_postgres
from services.common import db
from services.sender.ledger import DeliveryStatus, Outcome
from services.sender.store import DeliveryStore
from services.sender.writer import LedgerWriter

SENDER_SQL = Path(__file__).resolve().parents[2] / "services" / "sender" / "sql"


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


async def test_outcomes_delivered_while_postgresql_is_down_are_written_when_it_is_back(tmp_path):
    # A message was delivered just as PostgreSQL went down: the ledger writer keeps its outcome and
    # writes it once the server is back, instead of failing it (which would send the mail again).
    server = start_postgres(tmp_path / "pg", durable=False)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    await db.migrate(server.url, "sender", SENDER_SQL)
    pool = await db.open_pool(server.url, "sender", min_size=1, max_size=2)
    reported: list[list[Outcome]] = []

    async def report(outcomes) -> None:
        reported.append(list(outcomes))

    writer = LedgerWriter(DeliveryStore(pool, b"k" * 32), report)
    writer.start()
    blocker = await psycopg.AsyncConnection.connect(server.url)
    try:
        # The writer's transaction waits on a lock the test holds, so PostgreSQL dies in the middle of it.
        await blocker.execute("LOCK TABLE sender.deliveries IN ACCESS EXCLUSIVE MODE")
        outcome = Outcome(
            organization_id=1, campaign_id=9, subscriber_id=5, email="taro@example.net", status=DeliveryStatus.SENT,
            message_id="<m1@example.com>", smtp_code=250, smtp_message="2.0.0 ok", enhanced_status="2.0.0", tls=True,
            attempt=1, counts_attempt=True, occurred_at=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        written = writer.submit(outcome)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        for _ in range(400):  # until the writer's statement waits on the lock
            if (await (await blocker.execute(waiting)).fetchone()) == (1,):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the writer never reached the lock")
        server.process.send_signal(signal.SIGQUIT)
        server.process.wait(20)
        await asyncio.sleep(0.5)  # the writer's statement fails with the connection
        assert not written.done()
        server = start_postgres(tmp_path / "pg", port=port, durable=False)
        assert (await asyncio.wait_for(written, 60)).message_id == "<m1@example.com>"
        assert [o.subscriber_id for group in reported for o in group] == [5]
        async with pool.connection() as conn:
            row = await (await conn.execute("SELECT status FROM deliveries WHERE subscriber_id = 5")).fetchone()
        assert row == ("sent",)
    finally:
        await writer.stop()
        await pool.close()
        await blocker.close()
        server.stop()
