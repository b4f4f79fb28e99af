"""The campaigns schema: campaigns, their fan-out progress and per-recipient delivery state."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.campaigns.content import CampaignDraft
from services.campaigns.states import CampaignState, RecipientStatus, transition
from services.common.erasure import Erasure, exclude_writers, hold_off_erasures

SERVICE = "campaigns"


@dataclass
class CampaignRow:
    """One campaign as stored."""

    id: int
    organization_id: int
    name: str
    state: CampaignState
    list_ids: list[int]
    from_name: str
    from_address: str
    reply_to: str
    subject: str
    html_body: str
    text_body: str
    total: int
    published_batches: int
    last_subscriber_id: int
    fanout_complete: bool
    sent: int
    deferred: int
    bounced: int
    failed: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    segment_ids: list[int]
    suppressed: int = 0
    scheduled_at: dt.datetime | None = None
    schedule_time_zone: str = ""
    tracking: bool = False
    opens_unique: int = 0
    opens_total: int = 0
    clicks_unique: int = 0
    clicks_total: int = 0

    def __post_init__(self) -> None:
        self.state = CampaignState(self.state)

    @property
    def queued(self) -> int:
        """Handed to the senders with no outcome yet."""
        return max(0, self.total - self.sent - self.deferred - self.bounced - self.failed - self.suppressed)


@dataclass(frozen=True)
class RecipientOutcome:
    """The state one event puts one recipient in."""

    campaign_id: int
    subscriber_id: int
    email: str
    status: RecipientStatus
    smtp_code: int


_COLUMNS = """id, organization_id, name, state, list_ids, from_name, from_address, reply_to, subject,
    html_body, text_body, total, published_batches, last_subscriber_id, fanout_complete, sent, deferred,
    bounced, failed, created_at, started_at, finished_at, segment_ids, suppressed, scheduled_at, schedule_time_zone,
    tracking, opens_unique, opens_total, clicks_unique, clicks_total"""

# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
INSERT_CAMPAIGN = f"""
INSERT INTO campaigns (organization_id, name, list_ids, from_name, from_address, reply_to, subject,
                       html_body, text_body, segment_ids, tracking)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING {_COLUMNS}"""  # nosec B608

# Only a draft changes: the state check is in the statement, so a send that started meanwhile wins.
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
UPDATE_DRAFT = f"""
UPDATE campaigns SET name = %s, list_ids = %s, from_name = %s, from_address = %s, reply_to = %s, subject = %s,
    html_body = %s, text_body = %s, segment_ids = %s, tracking = %s
WHERE id = %s AND organization_id = %s AND state = 'draft'
RETURNING {_COLUMNS}"""  # nosec B608

# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SELECT_CAMPAIGN = f"SELECT {_COLUMNS} FROM campaigns WHERE id = %s AND organization_id = %s"  # nosec B608
SELECT_CAMPAIGN_FOR_UPDATE = SELECT_CAMPAIGN + " FOR UPDATE"
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SELECT_CAMPAIGNS = f"SELECT {_COLUMNS} FROM campaigns WHERE organization_id = %s ORDER BY id DESC LIMIT 500"  # nosec B608
SELECT_UNFINISHED_FANOUTS = f"SELECT {_COLUMNS} FROM campaigns WHERE state = 'sending' AND NOT fanout_complete"  # nosec B608

# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SET_STATE = f"""
UPDATE campaigns SET state = %(state)s,
    started_at = CASE WHEN %(state)s = 'sending' THEN coalesce(started_at, now()) ELSE started_at END,
    finished_at = CASE WHEN %(state)s IN ('sent', 'cancelled') THEN now() ELSE finished_at END
WHERE id = %(id)s RETURNING {_COLUMNS}"""  # nosec B608

# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
SET_SCHEDULE = f"""
UPDATE campaigns SET state = 'scheduled', scheduled_at = %(at)s, schedule_time_zone = %(zone)s
WHERE id = %(id)s RETURNING {_COLUMNS}"""  # nosec B608

# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
UNSCHEDULE = f"""
UPDATE campaigns SET state = 'draft', scheduled_at = NULL, schedule_time_zone = ''
WHERE id = %(id)s RETURNING {_COLUMNS}"""  # nosec B608

# The claim of due campaigns: each row moves from scheduled to sending in this one statement. A process
# that comes second skips the rows locked by the first, and once the first commits it no longer finds them
# scheduled (the row is re-checked after the lock), so each campaign starts exactly once.
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
CLAIM_DUE = f"""
UPDATE campaigns SET state = 'sending', started_at = coalesce(started_at, now())
WHERE state = 'scheduled' AND id IN (
    SELECT id FROM campaigns WHERE state = 'scheduled' AND scheduled_at <= %(now)s
    ORDER BY scheduled_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING {_COLUMNS}"""  # nosec B608

SELECT_NEXT_DUE = "SELECT min(scheduled_at) FROM campaigns WHERE state = 'scheduled'"

SELECT_TRACKING_ENABLED = "SELECT tracking_enabled FROM organization_tracking WHERE organization_id = %s"
UPSERT_TRACKING_ENABLED = """
INSERT INTO organization_tracking (organization_id, tracking_enabled) VALUES (%s, %s)
ON CONFLICT (organization_id) DO UPDATE SET tracking_enabled = EXCLUDED.tracking_enabled"""

# One open or click: a new row is a unique one; a repeat counts once more only a minute after the last one
# counted, so a flood of requests to one token (or a reload) is not counted again and again.
TRACK_EVENT = """
INSERT INTO tracking_events AS e (campaign_id, subscriber_id, link, url, count, machine_count, first_at, last_at)
VALUES (%(campaign)s, %(subscriber)s, %(link)s, %(url)s, %(human)s, 1 - %(human)s, %(now)s, %(now)s)
ON CONFLICT (campaign_id, subscriber_id, link) DO UPDATE
SET count = e.count + CASE WHEN %(human)s = 1 AND (e.count = 0 OR e.last_at <= %(now)s - interval '1 minute')
                           THEN 1 ELSE 0 END,
    machine_count = e.machine_count + 1 - %(human)s,
    last_at = CASE WHEN %(human)s = 1 AND (e.count = 0 OR e.last_at <= %(now)s - interval '1 minute')
                   THEN %(now)s ELSE e.last_at END
RETURNING count, %(human)s = 1 AND last_at = %(now)s AS counted"""
ADD_OPEN = """
UPDATE campaigns SET opens_unique = opens_unique + %s, opens_total = opens_total + %s WHERE id = %s"""
ADD_CLICK = """
UPDATE campaigns SET clicks_unique = clicks_unique + %s, clicks_total = clicks_total + %s WHERE id = %s"""
COUNT_CLICKERS = """
SELECT count(*) FROM tracking_events WHERE campaign_id = %s AND subscriber_id = %s AND link > 0 AND count > 0"""
SELECT_LINKS = """
SELECT link, min(url), count(*) FILTER (WHERE count > 0), coalesce(sum(count), 0)::bigint
FROM tracking_events WHERE campaign_id = %s AND link > 0 GROUP BY link ORDER BY link"""

SELECT_HOURLY = """
SELECT hour, sum(delivered)::bigint, sum(opened)::bigint, sum(clicked)::bigint FROM (
    SELECT date_trunc('hour', updated_at) AS hour, count(*) AS delivered, 0 AS opened, 0 AS clicked
    FROM campaign_deliveries WHERE campaign_id = %(id)s AND status = 'sent' GROUP BY 1
    UNION ALL
    SELECT date_trunc('hour', first_at), 0, count(*), 0
    FROM tracking_events WHERE campaign_id = %(id)s AND link = 0 AND count > 0 GROUP BY 1
    UNION ALL
    SELECT date_trunc('hour', first_click), 0, 0, count(*) FROM (
        SELECT min(first_at) AS first_click FROM tracking_events
        WHERE campaign_id = %(id)s AND link > 0 AND count > 0 GROUP BY subscriber_id) clicks
    GROUP BY 1
) activity GROUP BY hour ORDER BY hour"""

SELECT_DOMAINS = """
SELECT lower(split_part(d.email, '@', 2)) AS domain,
       count(*) FILTER (WHERE d.status = 'sent'), count(*) FILTER (WHERE d.status = 'bounced'),
       count(o.subscriber_id), count(*)
FROM campaign_deliveries d
LEFT JOIN tracking_events o ON o.campaign_id = d.campaign_id AND o.subscriber_id = d.subscriber_id
                           AND o.link = 0 AND o.count > 0
WHERE d.campaign_id = %s GROUP BY 1 ORDER BY 5 DESC, 1 LIMIT 50"""

RECORD_BATCH = """
UPDATE campaigns SET published_batches = %s, last_subscriber_id = %s, total = total + %s
WHERE id = %s AND published_batches = %s"""

FINISH_FANOUT = "UPDATE campaigns SET fanout_complete = true WHERE id = %s"

# Finished once every handed-out recipient has a final outcome.
COMPLETE_IF_DONE = """
UPDATE campaigns SET state = 'sent', finished_at = now()
WHERE id = %s AND state = 'sending' AND fanout_complete AND sent + bounced + failed + suppressed >= total"""

LOCK_CAMPAIGN = "SELECT organization_id FROM campaigns WHERE id = %s FOR UPDATE"
SELECT_ORGANIZATIONS = "SELECT DISTINCT organization_id FROM campaigns WHERE id = ANY(%s)"
SELECT_ERASED = """
SELECT subscriber_id, email_hash FROM erased_subscribers WHERE organization_id = %s AND subscriber_id = ANY(%s)"""
INSERT_ERASED = """
INSERT INTO erased_subscribers (organization_id, subscriber_id, email_hash, erased_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (organization_id, subscriber_id) DO NOTHING"""
# The rows and their statuses stay, so the counters and a late event's transition stay right.
ERASE_DELIVERIES = """
UPDATE campaign_deliveries d SET email = %(hash)s
FROM campaigns c
WHERE c.id = d.campaign_id AND c.organization_id = %(organization)s AND d.subscriber_id = %(subscriber)s
  AND d.email <> %(hash)s"""
SELECT_STATUSES = """
SELECT subscriber_id, status FROM campaign_deliveries WHERE campaign_id = %s AND subscriber_id = ANY(%s)"""
UPSERT_DELIVERY = """
INSERT INTO campaign_deliveries (campaign_id, subscriber_id, email, status, smtp_code)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (campaign_id, subscriber_id) DO UPDATE
SET status = EXCLUDED.status, smtp_code = EXCLUDED.smtp_code, updated_at = now()"""
ADD_COUNTERS = """
UPDATE campaigns SET sent = sent + %s, deferred = deferred + %s, bounced = bounced + %s, failed = failed + %s,
    suppressed = suppressed + %s
WHERE id = %s"""
CLAIM_BOUNCE = "INSERT INTO processed_bounces (bounce_id) VALUES (%s) ON CONFLICT DO NOTHING"


class CampaignStore:
    """Named SQL over the service's pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def create(self, organization_id: int, draft: CampaignDraft) -> CampaignRow:
        """Insert a draft campaign."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(
                INSERT_CAMPAIGN,
                (organization_id, draft.name, list(draft.list_ids), draft.from_name, draft.from_address,
                 draft.reply_to, draft.subject, draft.html_body, draft.text_body, list(draft.segment_ids),
                 draft.tracking),
            )  # fmt: skip
            return await cur.fetchone()

    async def update_draft(self, organization_id: int, campaign_id: int, draft: CampaignDraft) -> CampaignRow | None:
        """Replace a draft's content; None if the campaign is not a draft of the organisation."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(
                UPDATE_DRAFT,
                (draft.name, list(draft.list_ids), draft.from_name, draft.from_address, draft.reply_to,
                 draft.subject, draft.html_body, draft.text_body, list(draft.segment_ids), draft.tracking,
                 campaign_id, organization_id),
            )  # fmt: skip
            return await cur.fetchone()

    async def get(self, organization_id: int, campaign_id: int) -> CampaignRow | None:
        """One campaign of the organisation, or None."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(SELECT_CAMPAIGN, (campaign_id, organization_id))
            return await cur.fetchone()

    async def list(self, organization_id: int) -> list[CampaignRow]:
        """The organisation's campaigns, newest first."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(SELECT_CAMPAIGNS, (organization_id,))
            return await cur.fetchall()

    async def change_state(
        self, organization_id: int, campaign_id: int, allowed_from: Iterable[CampaignState], to: CampaignState
    ) -> tuple[CampaignRow | None, CampaignRow | None]:
        """Move a campaign to `to` if it is in one of `allowed_from`; returns (before, after)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(SELECT_CAMPAIGN_FOR_UPDATE, (campaign_id, organization_id))
            before = await cur.fetchone()
            if before is None or before.state not in allowed_from:
                return before, None
            await cur.execute(SET_STATE, {"state": to, "id": campaign_id})
            return before, await cur.fetchone()

    async def schedule(
        self, organization_id: int, campaign_id: int, at: dt.datetime, time_zone: str
    ) -> tuple[CampaignRow | None, CampaignRow | None]:
        """Schedule a draft, or move a schedule that has not started; returns (before, after)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(SELECT_CAMPAIGN_FOR_UPDATE, (campaign_id, organization_id))
            before = await cur.fetchone()
            if before is None or before.state not in ("draft", "scheduled"):
                return before, None
            await cur.execute(SET_SCHEDULE, {"at": at, "zone": time_zone, "id": campaign_id})
            return before, await cur.fetchone()

    async def unschedule(self, organization_id: int, campaign_id: int) -> tuple[CampaignRow | None, CampaignRow | None]:
        """Turn a scheduled campaign that has not started back into a draft; returns (before, after)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(SELECT_CAMPAIGN_FOR_UPDATE, (campaign_id, organization_id))
            before = await cur.fetchone()
            if before is None or before.state != "scheduled":
                return before, None
            await cur.execute(UNSCHEDULE, {"id": campaign_id})
            return before, await cur.fetchone()

    async def claim_due(self, now: dt.datetime, limit: int = 100) -> list[CampaignRow]:
        """Start the scheduled campaigns due at `now` (of any organisation); each is returned by one caller only."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(CLAIM_DUE, {"now": now, "limit": limit})
            return await cur.fetchall()

    async def next_due(self) -> dt.datetime | None:
        """When the earliest scheduled campaign is due; None when none is scheduled."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(SELECT_NEXT_DUE)
            return (await cur.fetchone())[0]

    async def tracking_enabled(self, organization_id: int) -> bool:
        """Whether the organisation measures opens and clicks (on unless switched off)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(SELECT_TRACKING_ENABLED, (organization_id,))
            found = await cur.fetchone()
            return True if found is None else found[0]

    async def set_tracking_enabled(self, organization_id: int, enabled: bool) -> None:
        """Switch measuring on or off for the organisation."""
        async with self.pool.connection() as conn:
            await conn.execute(UPSERT_TRACKING_ENABLED, (organization_id, enabled))

    async def record_tracking(
        self, campaign_id: int, subscriber_id: int, link: int, url: str, *, human: bool, now: dt.datetime
    ) -> bool:
        """Count one open (link 0) or click; returns whether it was counted (a person's, not a repeat)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(LOCK_CAMPAIGN, (campaign_id,))
            if await cur.fetchone() is None:
                return False
            cur = await conn.execute(
                TRACK_EVENT,
                {"campaign": campaign_id, "subscriber": subscriber_id, "link": link, "url": url,
                 "human": 1 if human else 0, "now": now},
            )  # fmt: skip
            count, counted = await cur.fetchone()
            if not counted:
                return False
            # A recipient is unique the first time a person's request of theirs is counted.
            first_for_row = count == 1
            if link == 0:
                await conn.execute(ADD_OPEN, (1 if first_for_row else 0, 1, campaign_id))
            else:
                cur = await conn.execute(COUNT_CLICKERS, (campaign_id, subscriber_id))
                first_click = first_for_row and (await cur.fetchone())[0] == 1
                await conn.execute(ADD_CLICK, (1 if first_click else 0, 1, campaign_id))
            return True

    async def link_clicks(self, campaign_id: int) -> list[tuple[int, str, int, int]]:
        """(link, url, unique, total) of each link clicked, in link order."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(SELECT_LINKS, (campaign_id,))
            return await cur.fetchall()

    async def hourly_activity(self, campaign_id: int) -> list[tuple[dt.datetime, int, int, int]]:
        """(hour, delivered, first opens, first clicks) for each hour with any, oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(SELECT_HOURLY, {"id": campaign_id})
            return await cur.fetchall()

    async def domain_activity(self, campaign_id: int) -> list[tuple[str, int, int, int, int]]:
        """(domain, delivered, bounced, opened, recipients) per recipient domain, the largest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(SELECT_DOMAINS, (campaign_id,))
            return await cur.fetchall()

    async def unfinished_fanouts(self) -> list[CampaignRow]:
        """Campaigns whose fan-out was interrupted (by a restart) and must continue."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(CampaignRow))
            await cur.execute(SELECT_UNFINISHED_FANOUTS)
            return await cur.fetchall()

    async def record_batch(self, campaign_id: int, batch_number: int, last_subscriber_id: int, size: int) -> None:
        """Remember that batch `batch_number` was published (idempotent for a republished batch)."""
        async with self.pool.connection() as conn:
            await conn.execute(RECORD_BATCH, (batch_number, last_subscriber_id, size, campaign_id, batch_number - 1))

    async def finish_fanout(self, campaign_id: int) -> None:
        """Mark every recipient handed out, and complete the campaign if all outcomes are in."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(FINISH_FANOUT, (campaign_id,))
            await conn.execute(COMPLETE_IF_DONE, (campaign_id,))

    async def apply_outcomes(self, outcomes: list[RecipientOutcome], bounce_ids: Sequence[str] = ()) -> None:
        """Apply delivery outcomes to recipient states and counters in one transaction."""
        by_campaign: dict[int, list[RecipientOutcome]] = {}
        async with self.pool.connection() as conn, conn.transaction():
            # Before any row lock: an erasure of these organisations waits for this transaction, or ends first.
            cur = await conn.execute(SELECT_ORGANIZATIONS, (sorted({o.campaign_id for o in outcomes}),))
            await hold_off_erasures(conn, SERVICE, [row[0] for row in await cur.fetchall()])
            fresh = await _claim_bounces(conn, bounce_ids, outcomes) if bounce_ids else outcomes
            for outcome in fresh:
                by_campaign.setdefault(outcome.campaign_id, []).append(outcome)
            for campaign_id in sorted(by_campaign):
                await _apply_campaign(conn, campaign_id, by_campaign[campaign_id])

    async def erase(self, erasure: Erasure) -> None:
        """Keep only the keyed hash of an erased subscriber's address in its recipient rows (idempotent)."""
        async with self.pool.connection() as conn, conn.transaction():
            await exclude_writers(conn, SERVICE, erasure.organization_id)
            await conn.execute(
                INSERT_ERASED,
                (erasure.organization_id, erasure.subscriber_id, erasure.email_hash, erasure.erased_at),
            )
            await conn.execute(
                ERASE_DELIVERIES,
                {"hash": erasure.email_hash, "organization": erasure.organization_id,
                 "subscriber": erasure.subscriber_id},
            )  # fmt: skip


async def _claim_bounces(
    conn: AsyncConnection, bounce_ids: Sequence[str], outcomes: list[RecipientOutcome]
) -> list[RecipientOutcome]:
    fresh = []
    for bounce_id, outcome in zip(bounce_ids, outcomes, strict=True):
        cur = await conn.execute(CLAIM_BOUNCE, (bounce_id,))
        if cur.rowcount:
            fresh.append(outcome)
    return fresh


async def _apply_campaign(conn: AsyncConnection, campaign_id: int, outcomes: list[RecipientOutcome]) -> None:
    # Serialise updates per campaign so the counters move exactly with the recipient states.
    cur = await conn.execute(LOCK_CAMPAIGN, (campaign_id,))
    found = await cur.fetchone()
    if found is None:
        return
    latest: dict[int, RecipientOutcome] = {}
    for outcome in outcomes:
        previous = latest.get(outcome.subscriber_id)
        if previous is None or transition(previous.status, outcome.status):
            latest[outcome.subscriber_id] = outcome
    cur = await conn.execute(SELECT_STATUSES, (campaign_id, list(latest)))
    current = {subscriber_id: RecipientStatus(status) for subscriber_id, status in await cur.fetchall()}
    cur = await conn.execute(SELECT_ERASED, (found[0], list(latest)))
    erased = dict(await cur.fetchall())
    delta = dict.fromkeys(RecipientStatus, 0)
    rows = []
    for subscriber_id, outcome in latest.items():
        old = current.get(subscriber_id)
        if old == outcome.status or not transition(old, outcome.status):
            continue
        if old is not None:
            delta[old] -= 1
        delta[outcome.status] += 1
        email = erased.get(subscriber_id, outcome.email)
        rows.append((campaign_id, subscriber_id, email, outcome.status, outcome.smtp_code))
    if not rows:
        return
    async with conn.cursor() as wcur:
        await wcur.executemany(UPSERT_DELIVERY, rows)
    await conn.execute(
        ADD_COUNTERS,
        (
            delta[RecipientStatus.SENT],
            delta[RecipientStatus.DEFERRED],
            delta[RecipientStatus.BOUNCED],
            delta[RecipientStatus.FAILED],
            delta[RecipientStatus.SUPPRESSED],
            campaign_id,
        ),
    )
    await conn.execute(COMPLETE_IF_DONE, (campaign_id,))
