"""Campaign counters follow each recipient's latest outcome, whatever order or how often events come."""

from pathlib import Path

from services.campaigns.content import CampaignDraft
from services.campaigns.store import CampaignStore, RecipientOutcome
from services.common import db

SQL = Path(__file__).parents[2] / "services" / "campaigns" / "sql"


async def make_store(database_url: str) -> CampaignStore:
    await db.migrate(database_url, "campaigns", SQL)
    return CampaignStore(await db.open_pool(database_url, "campaigns"))


async def test_counters_move_with_recipient_state(database_url):
    # Deferred then sent counts once as sent; a repeated event changes nothing; a late deferral after
    # sent is ignored; a DSN bounce after sent moves the recipient to bounced; the campaign completes
    # once the fan-out is done and every recipient has a final outcome.
    store = await make_store(database_url)
    try:
        draft = CampaignDraft("c", (1,), "", "a@example.com", "", "s", "", "t")
        row = await store.create(7, draft)
        await store.change_state(7, row.id, ("draft",), "sending")
        await store.record_batch(row.id, 1, 3, 3)

        def o(sub: int, status: str) -> RecipientOutcome:
            return RecipientOutcome(row.id, sub, f"u{sub}@example.net", status, 0)

        await store.apply_outcomes([o(1, "deferred"), o(2, "deferred"), o(3, "sent")])
        got = await store.get(7, row.id)
        assert (got.sent, got.deferred, got.queued) == (1, 2, 0)
        await store.apply_outcomes([o(1, "sent"), o(1, "sent"), o(2, "bounced"), o(1, "deferred")])
        got = await store.get(7, row.id)
        assert (got.sent, got.deferred, got.bounced) == (2, 0, 1)
        assert got.state == "sending"  # fan-out not finished yet
        await store.finish_fanout(row.id)
        got = await store.get(7, row.id)
        assert got.state == "sent" and got.finished_at is not None
        # A DSN arriving after acceptance turns a sent recipient into a bounced one, counted once.
        await store.apply_outcomes([o(3, "bounced")], ["dsn-1"])
        await store.apply_outcomes([o(3, "bounced")], ["dsn-1"])
        got = await store.get(7, row.id)
        assert (got.sent, got.bounced) == (1, 2)
        # Another organisation cannot see it.
        assert await store.get(8, row.id) is None
    finally:
        await store.pool.close()


async def test_republished_batch_is_counted_once(database_url):
    # A fan-out restarted after publishing batch 1 but before recording it records it once.
    store = await make_store(database_url)
    try:
        row = await store.create(1, CampaignDraft("c", (1,), "", "a@example.com", "", "s", "", "t"))
        await store.record_batch(row.id, 1, 500, 500)
        await store.record_batch(row.id, 1, 500, 500)
        await store.record_batch(row.id, 2, 900, 400)
        got = await store.get(1, row.id)
        assert (got.total, got.published_batches, got.last_subscriber_id) == (900, 2, 900)
    finally:
        await store.pool.close()
