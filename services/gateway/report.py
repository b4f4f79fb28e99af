"""A campaign's report on its page: rates, activity per hour and per recipient provider, as server-drawn charts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from flask_babel import gettext as _
from markupsafe import Markup

from services.gateway.charts import Series, bar_chart

# Recipient domains by the provider Japanese marketers read their results by; others are grouped as such.
PROVIDERS = {
    "gmail.com": "Gmail", "googlemail.com": "Gmail",
    "yahoo.co.jp": "Yahoo! JAPAN", "ymail.ne.jp": "Yahoo! JAPAN",
    "yahoo.com": "Yahoo", "ymail.com": "Yahoo",
    "docomo.ne.jp": "docomo",
    "ezweb.ne.jp": "au", "au.com": "au",
    "softbank.ne.jp": "SoftBank", "i.softbank.jp": "SoftBank",
    "icloud.com": "iCloud", "me.com": "iCloud", "mac.com": "iCloud",
    "outlook.com": "Outlook", "outlook.jp": "Outlook", "hotmail.com": "Outlook", "hotmail.co.jp": "Outlook",
    "live.jp": "Outlook",
}  # fmt: skip


@dataclass(frozen=True)
class Hour:
    """What happened in one hour (its start in UTC)."""

    start: dt.datetime
    delivered: int = 0
    opened: int = 0
    clicked: int = 0


@dataclass(frozen=True)
class Domain:
    """One recipient domain's counts."""

    domain: str
    recipients: int
    delivered: int
    bounced: int
    opened: int


@dataclass(frozen=True)
class ProviderRow:
    """One provider's recipients and what happened to their mail."""

    name: str
    recipients: int
    delivered: int
    bounced: int
    opened: int

    @property
    def open_rate(self) -> str:
        """Opened among delivered, as a percentage."""
        return rate(self.opened, self.delivered)


def rate(part: int, whole: int) -> str:
    """`part` of `whole` as a percentage with one decimal, or a dash when there is no whole."""
    return f"{100 * part / whole:.1f}%" if whole else "—"


def provider_of(domain: str) -> str:
    """The provider a recipient domain belongs to, else the domain itself (erased addresses have none)."""
    if not domain:
        return _("Erased")
    return PROVIDERS.get(domain, domain)


def provider_rows(domains: list[Domain], limit: int = 8) -> list[ProviderRow]:
    """Providers with the most recipients first; beyond `limit`, the rest together as Other."""
    totals: dict[str, list[int]] = {}
    for d in domains:
        row = totals.setdefault(provider_of(d.domain), [0, 0, 0, 0])
        for i, value in enumerate((d.recipients, d.delivered, d.bounced, d.opened)):
            row[i] += value
    ranked = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))
    rows = [ProviderRow(name, *values) for name, values in ranked[:limit]]
    rest = ranked[limit:]
    if rest:
        rows.append(ProviderRow(_("Other"), *(sum(v[i] for _n, v in rest) for i in range(4))))
    return rows


def hourly_chart(hours: list[Hour], zone: str) -> Markup | None:
    """Delivered, first opens and first clicks per hour, the hours in `zone`; None before anything happened."""
    if not hours:
        return None
    slots: list[dt.datetime] = []
    at = hours[0].start
    # Every hour between the first and the last (at most two days of them), so quiet hours show as gaps.
    while at <= hours[-1].start and len(slots) < 48:
        slots.append(at)
        at += dt.timedelta(hours=1)
    found = {h.start: h for h in hours}
    rows = [found.get(slot, Hour(slot)) for slot in slots]
    labels = [slot.astimezone(ZoneInfo(zone)).strftime("%m/%d %H:00") for slot in slots]
    return bar_chart(
        labels,
        [
            Series(_("Delivered"), "bar-delivered", [r.delivered for r in rows]),
            Series(_("Opened (people)"), "bar-opened", [r.opened for r in rows]),
            Series(_("Clicked (people)"), "bar-clicked", [r.clicked for r in rows]),
        ],
        _("Activity per hour (%(zone)s)", zone=zone),
    )


def provider_chart(rows: list[ProviderRow]) -> Markup | None:
    """Delivered, bounced and opened per provider; None without recipients."""
    if not rows:
        return None
    return bar_chart(
        [r.name for r in rows],
        [
            Series(_("Delivered"), "bar-delivered", [r.delivered for r in rows]),
            Series(_("Bounced"), "bar-bounced", [r.bounced for r in rows]),
            Series(_("Opened (people)"), "bar-opened", [r.opened for r in rows]),
        ],
        _("Per recipient provider"),
    )
