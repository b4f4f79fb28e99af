"""The campaign report's charts and provider table, drawn on the server without script or inline style."""

from __future__ import annotations

import datetime as dt
import re

from flask import Flask

from services.gateway import report
from services.gateway.charts import Series, bar_chart
from services.gateway.i18n import init_i18n


def test_a_chart_is_plain_svg_with_every_text_escaped() -> None:
    # Two series over three labels: six bars and a legend entry per series; a label with markup is text;
    # nothing a strict CSP would block (no style attribute, no script, no external reference).
    svg = str(
        bar_chart(["a", "<b>x</b>", "c"], [Series("one", "bar-a", [1, 5, 0]), Series("two", "bar-b", [2, 0, 3])], "t")
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert (
        len(re.findall(r'<rect class="bar-[ab]" x="[0-9.]+" y="[0-9.]+" width="[0-9.]+" height="[0-9.]+">', svg)) == 6
    )
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert "style=" not in svg and "<script" not in svg and "href" not in svg
    # The axis tops out at a round number at or above the largest value.
    assert ">10</text>" in str(bar_chart(["a"], [Series("one", "bar-a", [7])], "t"))


def test_providers_group_domains_and_rates_read_as_percentages() -> None:
    # gmail.com and googlemail.com are one Gmail; docomo, au and SoftBank by their carriers' domains;
    # past the limit the smallest are Other; erased recipients (no domain) are named so.
    app = Flask(__name__)
    init_i18n(app)
    domains = [
        report.Domain("gmail.com", 10, 9, 1, 4), report.Domain("googlemail.com", 2, 2, 0, 1),
        report.Domain("docomo.ne.jp", 5, 5, 0, 2), report.Domain("ezweb.ne.jp", 3, 3, 0, 0),
        report.Domain("i.softbank.jp", 1, 1, 0, 1), report.Domain("", 1, 1, 0, 0),
        report.Domain("example.net", 1, 0, 1, 0),
    ]  # fmt: skip
    with app.test_request_context(headers={"Accept-Language": "en"}):
        rows = report.provider_rows(domains, limit=3)
    assert [(r.name, r.recipients, r.delivered, r.opened) for r in rows] == [
        ("Gmail", 12, 11, 5), ("docomo", 5, 5, 2), ("au", 3, 3, 0), ("Other", 3, 2, 1),
    ]  # fmt: skip
    assert rows[0].open_rate == "45.5%" and report.rate(1, 0) == "—"


def test_the_hourly_chart_shows_quiet_hours_between_busy_ones_in_the_readers_zone() -> None:
    # Activity at 00:00 and 03:00 UTC gives four hours of bars, labelled 09:00 to 12:00 in Tokyo.
    app = Flask(__name__)
    init_i18n(app)
    start = dt.datetime(2026, 12, 7, 0, tzinfo=dt.UTC)
    hours = [report.Hour(start, 5, 2, 1), report.Hour(start + dt.timedelta(hours=3), 0, 1, 0)]
    with app.test_request_context(headers={"Accept-Language": "en"}):
        svg = str(report.hourly_chart(hours, "Asia/Tokyo"))
    assert "12/07 09:00" in svg and "12/07 12:00" in svg
    assert len(re.findall(r'<rect class="bar-delivered" [^>]*><title>', svg)) == 4
    assert report.hourly_chart([], "Asia/Tokyo") is None
