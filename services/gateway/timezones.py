"""The time zones the console shows times in: the installation's (MAILBLAST_TIME_ZONE) or the person's own."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import current_app, request

from services.gateway.security import TIME_ZONE_COOKIE

# The zones the forms offer (the console's own is always first); any IANA name is accepted by the services.
TIME_ZONES = (
    "Asia/Tokyo", "UTC", "Asia/Seoul", "Asia/Shanghai", "Asia/Taipei", "Asia/Singapore", "Asia/Bangkok",
    "Asia/Kolkata", "Australia/Sydney", "Europe/London", "Europe/Paris", "Europe/Berlin", "America/New_York",
    "America/Chicago", "America/Los_Angeles", "Pacific/Honolulu",
)  # fmt: skip


def zone_or_none(name: str) -> ZoneInfo | None:
    """The IANA zone of this name, or None for a name that is none."""
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def console_zone() -> str:
    """The installation's time zone (Asia/Tokyo unless MAILBLAST_TIME_ZONE says otherwise)."""
    return current_app.config["MAILBLAST"].time_zone


def viewer_zone() -> str:
    """The zone the person chose on their profile page (a cookie), else the installation's."""
    chosen = request.cookies.get(TIME_ZONE_COOKIE, "")
    return chosen if zone_or_none(chosen) else console_zone()


def offered_zones() -> list[str]:
    """The zones a menu offers: the viewer's and the console's first, then the common ones."""
    first = list(dict.fromkeys([viewer_zone(), console_zone()]))
    return [*first, *(z for z in TIME_ZONES if z not in first)]


def local(moment: dt.datetime, zone: str) -> str:
    """A moment as a date and time in `zone`, to the minute."""
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
