"""Lists and campaigns announce every suppression and campaign state change on NATS, for the senders' copies.

Real PostgreSQL and NATS: the changes are written by the services' own statements (triggers fill the
outbox in the same transaction), relayed in order, and the streams keep the last change of each key.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import psycopg
import pytest_asyncio
from mailblast.v1 import campaigns_pb2, events_pb2, lists_suppression_pb2
from nats.js.errors import NotFoundError

from services.campaigns.announcements import campaign_state_relay
from services.campaigns.content import CampaignDraft
from services.campaigns.store import CampaignStore
from services.common import bus, db
from services.common.privacy import email_hash
from services.lists.service import Running
from tests.integration import test_lists as base
from tests.integration.test_lists import ORG, as_user
from tests.integration.test_lists_import import ADMIN

lists_service = base.lists_service
stub = base.stub

SERVICES = Path(__file__).parents[2] / "services"


async def last_changes(nats_server, stream: str, subject: str, count: int, timeout: float = 20.0) -> dict[str, bytes]:
    """The last message of each subject of a stream, once it holds `count` subjects."""
    nc = await nats_server.connect()
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await js.stream_info(stream, subjects_filter=subject)
                subjects = info.state.subjects or {}
            except Exception:
                subjects = {}
            if len(subjects) >= count:
                return {s: (await js.get_last_msg(stream, s)).data for s in subjects}
            assert time.monotonic() < deadline, f"{stream} holds {len(subjects)} subjects, not {count}"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


def suppression_changes(data: dict[str, bytes]) -> dict[str, events_pb2.SuppressionChanged]:
    """The SuppressionChanged of each subject."""
    return {s: events_pb2.SuppressionChanged.FromString(d) for s, d in data.items()}


async def wait_for(check, timeout: float = 20.0):
    """Await check() until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.05)
    return value


async def test_lists_announces_each_suppression_added_and_removed_by_keyed_hash(
    lists_service: Running, stub, signer, internal_key, nats_server
):
    # An administrator suppresses two addresses, then takes one off the list again: the suppression
    # stream holds, per address, only its last change: the keyed hash (never the address) with its
    # organisation and reason, and for the one taken off a change saying so with a greater version.
    await stub.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(
            emails=["Taro@example.jp", "hanako@example.jp"], reason=events_pb2.SUPPRESSION_REASON_MANUAL
        ),
        metadata=as_user(signer, scopes=ADMIN),
    )
    taro, hanako = (email_hash(internal_key, e) for e in ("taro@example.jp", "hanako@example.jp"))
    added = suppression_changes(await last_changes(nats_server, bus.STREAM_SUPPRESSION, ">", 2))
    assert {(e.organization_id, e.email_hash, e.suppressed, e.reason) for e in added.values()} == {
        (ORG, taro, True, events_pb2.SUPPRESSION_REASON_MANUAL),
        (ORG, hanako, True, events_pb2.SUPPRESSION_REASON_MANUAL),
    }
    assert set(added) == {bus.suppression_subject(ORG, taro), bus.suppression_subject(ORG, hanako)}
    first = added[bus.suppression_subject(ORG, hanako)].version
    await stub.RemoveSuppression(
        lists_suppression_pb2.RemoveSuppressionRequest(email="hanako@example.jp"),
        metadata=as_user(signer, scopes=ADMIN),
    )

    async def lifted():
        found = suppression_changes(await last_changes(nats_server, bus.STREAM_SUPPRESSION, ">", 2))
        change = found[bus.suppression_subject(ORG, hanako)]
        return change if not change.suppressed else None

    change = await wait_for(lifted)
    assert change.version > first and change.reason == events_pb2.SUPPRESSION_REASON_UNSPECIFIED
    kept = await stored(nats_server, bus.STREAM_SUPPRESSION)
    assert len(kept) == 2 and not any(b"example.jp" in data for data in kept)


async def stored(nats_server, stream: str) -> list[bytes]:
    """Every message a stream still holds."""
    nc = await nats_server.connect()
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        kept = []
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                kept.append((await js.get_msg(stream, seq)).data)
            except NotFoundError:
                continue
        return kept
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def old_lists_schema(database_url, internal_key, tmp_path):
    """The lists schema as the release before the announcements left it, with two suppressions in it."""
    await migrate_before(database_url, "lists", "0009_suppression_changes.sql", tmp_path)
    with psycopg.connect(database_url) as conn:
        for address, reason in (("old1@example.jp", "unsubscribed"), ("old2@example.jp", "complaint")):
            conn.execute(
                "INSERT INTO lists.suppressions (organization_id, email, email_hash, reason) VALUES (%s, %s, %s, %s)",
                (ORG, address, email_hash(internal_key, address), reason),
            )


async def migrate_before(database_url: str, schema: str, first_new: str, directory: Path) -> None:
    """Apply a service's migrations older than `first_new`, as the previous release did."""
    older = directory / f"migrations-{schema}"
    older.mkdir()
    for path in sorted((SERVICES / schema / "sql").glob("*.sql")):
        if path.name < first_new:
            shutil.copy(path, older / path.name)
    await db.migrate(database_url, schema, older)


@pytest_asyncio.fixture
async def upgraded_lists(old_lists_schema, lists_service):
    """The lists service started on the older schema: the first start after the change."""
    yield lists_service


async def test_the_first_start_after_the_change_announces_every_existing_suppression(
    upgraded_lists, internal_key, nats_server
):
    # Suppressions made by the release before (unsubscribed, complained) reach the stream when lists
    # first starts with the announcements, so a sender that starts fresh knows them all.
    found = suppression_changes(await last_changes(nats_server, bus.STREAM_SUPPRESSION, ">", 2))
    assert {(e.email_hash, e.reason) for e in found.values()} == {
        (email_hash(internal_key, "old1@example.jp"), events_pb2.SUPPRESSION_REASON_UNSUBSCRIBED),
        (email_hash(internal_key, "old2@example.jp"), events_pb2.SUPPRESSION_REASON_COMPLAINT),
    }


@pytest_asyncio.fixture
async def campaigns(database_url, nats_server, tmp_path):
    """The campaigns store on a schema where campaigns existed before the announcements, and its relay."""
    await migrate_before(database_url, "campaigns", "0005_campaign_state_changes.sql", tmp_path)
    store = CampaignStore(await db.open_pool(database_url, "campaigns"))
    # Written as that older release wrote it (today's store writes columns later migrations add).
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO campaigns (organization_id, name, list_ids, from_address, subject, text_body, state)"
            " VALUES (%s, 'before', '{1}', 'a@example.com', 's', 't', 'paused') RETURNING id",
            (ORG,),
        )
        (old_id,) = await cur.fetchone()
    await db.migrate(database_url, "campaigns", SERVICES / "campaigns" / "sql")
    nc = await nats_server.connect("campaigns")
    js = nc.jetstream()
    await bus.ensure_streams(js, (bus.STREAM_CAMPAIGN_STATE,))
    try:
        yield store, campaign_state_relay(store.pool, js), old_id
    finally:
        await nc.close()
        await store.pool.close()


async def test_campaigns_announces_each_state_change_in_order_and_what_existed_before(campaigns, nats_server):
    # A campaign paused before the announcements existed is announced at the first start after them;
    # a new campaign is announced as a draft, then sending, paused, sending again and cancelled: its
    # subject keeps only the last change, cancelled, with the greatest version.
    store, relay, old_id = campaigns
    assert await relay.publish_pending() == 1
    created = await store.create(ORG, CampaignDraft("new", (1,), "", "a@example.com", "", "s", "", "t"))
    for before, after in (("draft", "sending"), ("sending", "paused"), ("paused", "sending"), ("sending", "cancelled")):
        await store.change_state(ORG, created.id, (before,), after)
    assert await relay.publish_pending() == 5
    found = await last_changes(nats_server, bus.STREAM_CAMPAIGN_STATE, ">", 2)
    changes = {s: events_pb2.CampaignStateChanged.FromString(d) for s, d in found.items()}
    old = changes[bus.campaign_state_subject(ORG, old_id)]
    new = changes[bus.campaign_state_subject(ORG, created.id)]
    assert (old.campaign_id, old.state) == (old_id, campaigns_pb2.CAMPAIGN_STATE_PAUSED)
    assert (new.organization_id, new.state) == (ORG, campaigns_pb2.CAMPAIGN_STATE_CANCELLED)
    assert new.version > old.version
    assert await relay.publish_pending() == 0
