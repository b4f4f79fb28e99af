"""`make bench-copies`: what the senders' copy of the suppression lists costs, as a table or in memory.

The send path checks every recipient against its organisation's suppression list and its campaign's
state without asking lists or campaigns. Two ways to hold that copy were weighed:
- a table in the sender's schema (store_copies.py), fed once per installation by a durable all sender
  processes share and read by the batch claim in the same statement (store.SQL_CLAIM);
- a dict in every sender process, fed by replaying the stream at each start (a KV watch).

On an embedded PostgreSQL (fsync off) and NATS this measures, per recipient: the claim with the copies
joined against the same claim without them, plus the keyed hash and a dict look-up; per suppression:
the memory a dict entry takes, replaying the stream into a dict, and feeding the table through the
copier's group writes. Run: make bench-copies [ARGS="--suppressions 200000"].
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from mailblast.v1 import events_pb2
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from dev.embedded import start_nats, start_postgres
from services.common import bus, db
from services.common.privacy import email_hasher
from services.sender import convert
from services.sender.service import SCHEMA, SQL_DIR
from services.sender.store import SQL_CLAIM
from services.sender.store_copies import CopyStore, SuppressionChange

ORG = 1
CHUNK = 64  # SENDER_CONCURRENCY's default: one claim per delivery window

# The claim as it was before the copies: the same insert, no joins.
SQL_CLAIM_ALONE = """
INSERT INTO deliveries AS d (campaign_id, subscriber_id, organization_id, email, status, claim_owner, claim_expires)
SELECT %(campaign)s, w.subscriber_id, %(organization)s, w.email, 'claimed', %(owner)s,
       now() + make_interval(secs => %(lease)s)
FROM unnest(%(ids)s::bigint[], %(emails)s::text[], %(hashes)s::text[]) AS w(subscriber_id, email, email_hash)
ON CONFLICT (campaign_id, subscriber_id) DO UPDATE SET claim_owner = EXCLUDED.claim_owner,
    claim_expires = EXCLUDED.claim_expires
WHERE d.status IN ('deferred', 'claimed')
  AND (d.claim_expires IS NULL OR d.claim_expires < now() OR d.claim_owner = EXCLUDED.claim_owner)
RETURNING d.subscriber_id
"""


async def fill_table(copies: CopyStore, hashes: list[str]) -> float:
    """Write the changes into the table as the copier does (groups of 500); seconds per change."""
    start = time.perf_counter()
    for at in range(0, len(hashes), 500):
        group = [SuppressionChange(ORG, h, "unsubscribed", at + i + 1) for i, h in enumerate(hashes[at : at + 500])]
        await copies.apply_suppressions(group)
    return (time.perf_counter() - start) / len(hashes)


async def claims(pool, hasher, chunks: int, suppressed: list[str]) -> tuple[float, float]:
    """Microseconds per recipient of claims of CHUNK new recipients (four of them suppressed), with the
    copies joined and alone, taken in turns so that both meet the same ledger and the same load."""
    timings: dict[str, list[float]] = {"joined": [], "alone": []}
    for n in range(chunks):
        for kind, sql in (("joined", SQL_CLAIM), ("alone", SQL_CLAIM_ALONE)):
            emails = [f"{kind}{n}-{i}@example.net" for i in range(CHUNK)]
            params = {
                "campaign": 1_000_000 + 2 * n + (kind == "alone"), "organization": ORG, "owner": "bench",
                "lease": 300.0, "ids": list(range(CHUNK)), "emails": emails,
                "hashes": [hasher(e) for e in emails[:-4]] + suppressed[n * 4 : n * 4 + 4],
            }  # fmt: skip
            start = time.perf_counter()
            async with pool.connection() as conn, conn.transaction():
                await (await conn.execute(sql, params)).fetchall()
            timings[kind].append(time.perf_counter() - start)
    return tuple(statistics.median(timings[kind]) / CHUNK * 1e6 for kind in ("joined", "alone"))


def in_memory(hashes: list[str], hasher) -> tuple[float, float, float]:
    """Bytes per entry of a dict copy, and microseconds per recipient for the keyed hash and the look-up."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    # New strings, as a replay decodes them.
    copy = {(ORG, h.encode().decode()): "unsubscribed" for h in hashes}
    size = (tracemalloc.get_traced_memory()[0] - before) / len(copy)
    tracemalloc.stop()
    emails = [f"r{i}@example.net" for i in range(100_000)]
    start = time.perf_counter()
    keyed = [hasher(e) for e in emails]
    hash_us = (time.perf_counter() - start) / len(emails) * 1e6
    start = time.perf_counter()
    found = sum(1 for h in keyed if (ORG, h) in copy)
    lookup_us = (time.perf_counter() - start) / len(emails) * 1e6
    assert found == 0
    return size, hash_us, lookup_us


def suppression(email_hash: str, version: int) -> bytes:
    """A SuppressionChanged putting the address on the list, as lists publishes it."""
    return events_pb2.SuppressionChanged(
        organization_id=ORG, email_hash=email_hash, suppressed=True,
        reason=events_pb2.SUPPRESSION_REASON_UNSUBSCRIBED, version=version,
    ).SerializeToString()  # fmt: skip


async def replay(url: str, creds: str, hashes: list[str]) -> float:
    """Publish the changes to the suppression stream, then replay them into a dict; seconds per change."""
    nc, js = await bus.connect(url, "bench", creds)
    try:
        for at in range(0, len(hashes), 1000):
            acks = [
                js.publish(bus.suppression_subject(ORG, h), suppression(h, at + i + 1))
                for i, h in enumerate(hashes[at : at + 1000])
            ]
            await asyncio.gather(*acks)
        copy: dict[tuple[int, str], str | None] = {}
        # As a watch replays: everything the stream keeps, without acknowledgements, a thousand at a time.
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
        sub = await js.pull_subscribe(bus.SUBJECT_SUPPRESSION_CHANGED, "bench-replay", config=config)
        start = time.perf_counter()
        while len(copy) < len(hashes):
            for msg in await sub.fetch(1000, timeout=30):
                change = convert.suppression_change(events_pb2.SuppressionChanged.FromString(msg.data))
                copy[(change.organization_id, change.email_hash)] = change.reason
        return (time.perf_counter() - start) / len(hashes)
    finally:
        await nc.close()


async def main(suppressions: int, chunks: int) -> None:
    """Measure both and print per-message and per-suppression figures."""
    key = secrets.token_hex(32).encode()
    hasher = email_hasher(key)
    hashes = [hasher(f"s{i}@example.net") for i in range(suppressions)]
    with tempfile.TemporaryDirectory(prefix="mailblast-bench-") as tmp:
        postgres = start_postgres(Path(tmp) / "pg", durable=False)
        nats = start_nats(Path(tmp) / "nats")
        try:
            await db.migrate(postgres.url, SCHEMA, SQL_DIR)
            pool = await db.open_pool(postgres.url, SCHEMA, max_size=2)
            copies = CopyStore(pool, key)
            feed = await fill_table(copies, hashes)
            async with pool.connection() as conn:
                await conn.execute("ANALYZE")
            joined, alone = await claims(pool, hasher, chunks, hashes)
            await pool.close()
            size, hash_us, lookup_us = in_memory(hashes, hasher)
            replayed = await replay(nats.url, "", hashes)
        finally:
            nats.stop()
            postgres.stop()
    print(f"suppressions in the copy: {suppressions:,}; claims of {CHUNK} recipients: {chunks}")
    print("per recipient sent:")
    print(f"  claim with the copies joined (table)     {joined:8.2f} us")
    print(f"  claim alone                              {alone:8.2f} us")
    print(f"  => the table's check                     {joined - alone:8.2f} us")
    print(f"  keyed hash (both ways)                   {hash_us:8.2f} us")
    print(f"  dict look-up (in memory)                 {lookup_us:8.2f} us")
    print("per suppression held:")
    print(f"  dict entry, in every sender process      {size:8.0f} bytes")
    print(f"  replay from the stream (fetch, decode)   {replayed * 1e6:8.1f} us")
    print(f"  write into the table (group upserts)     {feed * 1e6:8.1f} us")
    print(
        f"1,000,000 suppressions in memory: {size * 1e6 / 2**20:,.0f} MiB and {replayed * 1e6:,.0f} s of replay in "
        f"every sender process at every start; as a table: {(replayed + feed) * 1e6:,.0f} s once per installation"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suppressions", type=int, default=200_000)
    parser.add_argument("--chunks", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.suppressions, args.chunks))
