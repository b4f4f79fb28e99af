"""Scheduled sending (予約配信): checking a schedule, and starting each campaign once when it falls due.

The scheduler knows neither SQL nor gRPC: `service.py` gives it the store's claim (one UPDATE that moves
due campaigns from scheduled to sending, so only one process ever gets a campaign) and what starting a
campaign means (its fan-out and the audit entry). Time is the service's clock, which tests move.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.campaigns.store import CampaignRow
from services.common.clock import Clock
from services.common.errors import InvalidArgument
from services.common.log import get_logger

log = get_logger(__name__)

# A schedule further ahead than this is almost surely a typo (a year of 20266).
MAX_AHEAD = dt.timedelta(days=366)


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` names; an unknown one is refused with its name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument("unknown time zone %(zone)r: use an IANA name such as Asia/Tokyo", zone=name) from None


def check_schedule(send_at: dt.datetime, zone_name: str, now: dt.datetime) -> dt.datetime:
    """The moment a campaign may be scheduled for, in UTC: in the future, within a year, in a known zone."""
    zone = time_zone(zone_name)
    local = send_at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    if send_at <= now:
        raise InvalidArgument(
            "the send time %(at)s (%(zone)s) has passed: choose a time in the future", at=local, zone=zone_name
        )
    if send_at - now > MAX_AHEAD:
        raise InvalidArgument("the send time %(at)s (%(zone)s) is more than a year ahead", at=local, zone=zone_name)
    return send_at.astimezone(dt.UTC)


class DueCampaigns(Protocol):
    """Where scheduled campaigns are kept."""

    async def claim_due(self, now: dt.datetime, limit: int = 100) -> list[CampaignRow]:
        """Move the campaigns due at `now` to sending and return them; a campaign is returned to one caller only."""
        ...


class Scheduler:
    """Starts scheduled campaigns when they fall due, by the service's clock."""

    def __init__(
        self,
        store: DueCampaigns,
        clock: Clock,
        start: Callable[[CampaignRow], Awaitable[None]],
        poll_seconds: float,
    ) -> None:
        self._store = store
        self._clock = clock
        self._start = start
        self._poll_seconds = poll_seconds

    async def run_once(self) -> Sequence[CampaignRow]:
        """Claim every campaign due now and start it; returns those this process started."""
        started = await self._store.claim_due(self._clock.now())
        for campaign in started:
            log.info("scheduled campaign started", campaign_id=campaign.id, scheduled_at=str(campaign.scheduled_at))
            await self._start(campaign)
        return started

    async def run(self, stop: asyncio.Event) -> None:
        """Look for due campaigns now and then every poll interval until `stop` is set."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                # The database may be away for a moment; the next look tries again, nothing is lost.
                log.exception("could not start scheduled campaigns; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_seconds)
