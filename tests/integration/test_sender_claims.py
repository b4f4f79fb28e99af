"""The sender's claims on recipients in real PostgreSQL: a renewed claim holds, a lapsed one passes on."""

from __future__ import annotations

from pathlib import Path

from services.common import db
from services.sender.store import DeliveryStore

SQL_DIR = Path(__file__).resolve().parents[2] / "services" / "sender" / "sql"


async def test_a_renewed_claim_holds_and_a_lapsed_one_passes_to_another_sender(database_url):
    # Sender A holds a recipient; B cannot take it while A's lease runs. A lease that ran out (renewed
    # with no time left, as a dead sender's is never renewed) lets B take it, after which A's renewals
    # hold nothing and B's do.
    await db.migrate(database_url, "sender", SQL_DIR)
    pool = await db.open_pool(database_url, "sender")
    try:
        store = DeliveryStore(pool, b"k" * 32)
        recipient = [(1, "taro@example.net")]
        assert (await store.claim(1, 9, recipient, "a", 3600)).claimed == {1}
        assert (await store.claim(1, 9, recipient, "b", 3600)).claimed == frozenset()
        assert await store.renew(9, "a", 3600) == 1
        assert (await store.claim(1, 9, recipient, "b", 3600)).claimed == frozenset()
        assert await store.renew(9, "a", 0) == 1
        assert (await store.claim(1, 9, recipient, "b", 3600)).claimed == {1}
        assert await store.renew(9, "a", 3600) == 0
        assert await store.renew(9, "b", 3600) == 1
        assert await store.renew(8, "b", 3600) == 0
    finally:
        await pool.close()
