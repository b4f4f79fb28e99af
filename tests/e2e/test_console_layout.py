"""Every console page in Chromium at 1280 px and 390 px, in Japanese: it fits, and it shows no untranslated value."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from zoneinfo import ZoneInfo

from playwright.async_api import Page, expect

from tests.support.browser import log_in
from tests.support.console import OWNER, PASSWORD

WIDTHS = (1280, 390)
# Values the services hand the console; a Japanese page shows each translated, never as it is.
RAW_VALUES = re.compile(
    r"\b(draft|sending|paused|sent|cancelled|scheduled|owner|admin|editor|viewer|active|unsubscribed|"
    r"error_stopped|complained|pending|deleted|done|failed|running)\b"
)


def _screenshot_dir(tmp_path: Path) -> Path:
    # MAILBLAST_SCREENSHOT_DIR keeps them where a person can look at them; otherwise the test's own folder.
    target = Path(os.environ.get("MAILBLAST_SCREENSHOT_DIR") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


async def _check_page(page: Page, base: str, path: str, name: str, shots: Path) -> list[str]:
    """Screenshots of one page at each width, and what is wrong with it."""
    problems = []
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        response = await page.goto(f"{base}{path}")
        assert response is not None and response.ok, (path, response and response.status)
        await page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 0:
            problems.append(f"{path} is {overflow}px wider than a {width}px window")
        if width == 1280:
            # The navigation fits on one line: every link's top is the first link's.
            tops = await page.locator("header.top nav > a, header.top nav > details").evaluate_all(
                "items => items.map(i => Math.round(i.getBoundingClientRect().top))"
            )
            if len(tops) < 6 or len(set(tops)) != 1:
                problems.append(f"{path}: the navigation wraps ({tops})")
            # The log-out button is one line of text, not a column of characters.
            height = await page.locator("#logout").evaluate("b => b.getBoundingClientRect().height")
            if height >= 40:
                problems.append(f"{path}: the log-out button is {height}px tall")
            # A checkbox sits on its label's line.
            for box in await page.locator("label input[type=checkbox]").all():
                same_line = await box.evaluate(
                    "b => { const l = b.closest('label').getBoundingClientRect();"
                    " const r = b.getBoundingClientRect(); return r.top < l.top + l.height / 2 + 2"
                    " && l.height < 3 * r.height + 30; }"
                )
                if not same_line:
                    problems.append(f"{path}: a checkbox is not beside its label")
            # Codes (an audit action, a JSON detail) and the mail's own text are shown as they are on purpose.
            shown = await page.evaluate(
                "() => [...document.querySelectorAll('main, header.top .who')].map(e => { const c = e.cloneNode(true);"
                " c.querySelectorAll('code, pre, script, iframe').forEach(x => x.remove()); return c.textContent; })"
                ".join(' ')"
            )
            found = RAW_VALUES.findall(shown)
            if found:
                problems.append(f"{path} shows untranslated values {sorted(set(found))}")
    return problems


async def test_every_console_page_fits_and_is_translated(make_site, people, tmp_path: Path):
    # An owner using a Japanese Chromium makes a list with two subscribers, a campaign (sent) and a draft,
    # then opens every console page at 1280 px and at 390 px: no page is wider than the window, at 1280 px
    # the navigation is one line, the log-out button one line, checkboxes sit beside their labels, and no
    # state, role or status shows as the raw value the services use. Screenshots of each are kept.
    _console, base = await make_site()
    shots = _screenshot_dir(tmp_path)
    page = await people.open(locale="ja-JP")
    await log_in(page, base, OWNER, PASSWORD)
    await expect(page.locator("#current-login")).to_have_text(OWNER)

    await page.goto(f"{base}/lists")
    await page.fill("#list-name", "会員リスト")
    await page.click("#create-list")
    list_path = page.url.removeprefix(base)
    csv_data = "email,name\nhanako@example.net,山田 花子\ntaro@example.net,Taro\n".encode()
    await page.set_input_files("#csv-file", files=[{"name": "people.csv", "mimeType": "text/csv", "buffer": csv_data}])
    await page.click("#upload-csv")
    await expect(page.locator("#import-progress")).to_have_attribute("data-finished", "true")
    import_path = page.url.removeprefix(base)

    for name in ("春のセール", "秋の予約", "夏の下書き"):
        await page.goto(f"{base}/campaigns/new")
        await page.fill("#campaign-name", name)
        await page.check("input[name=list_ids]")
        await page.fill("#from-address", "news@news.example.com")
        await page.fill("#subject", "{{ name }}様へのお知らせ")
        await page.fill("#html-body", "<p>{{ name }}様</p><p><a href='https://example.com/sale'>セール</a></p>")
        await page.fill("#text-body", "{{ name }}様")
        await page.click("#save-campaign")
    draft_path = page.url.removeprefix(base)
    await page.goto(f"{base}/campaigns")
    await page.get_by_role("link", name="秋の予約").click()
    scheduled_path = page.url.removeprefix(base)
    in_a_month = dt.datetime.now(ZoneInfo("Asia/Tokyo")) + dt.timedelta(days=30)
    await page.fill("#send-at", in_a_month.strftime("%Y-%m-%dT09:00"))
    await page.click("#schedule-campaign")
    await expect(page.locator("#campaign-progress")).to_have_attribute("data-state", "scheduled")
    await page.goto(f"{base}/campaigns")
    await page.get_by_role("link", name="春のセール").click()
    sent_path = page.url.removeprefix(base)
    await page.click("#send-campaign")
    await expect(page.locator("#campaign-progress")).to_have_attribute("data-state", "sent", timeout=60_000)

    await page.goto(f"{base}/subscribers")
    await page.get_by_role("link", name="hanako@example.net").click()
    subscriber_path = page.url.removeprefix(base)

    pages = {
        "campaigns": "/campaigns",
        "campaign-new": "/campaigns/new",
        "campaign-sent": sent_path,
        "campaign-draft": draft_path,
        "campaign-scheduled": scheduled_path,
        "campaign-edit": f"{draft_path}/edit",
        "lists": "/lists",
        "list": list_path,
        "import": import_path,
        "subscribers": "/subscribers",
        "subscriber": subscriber_path,
        "segments": "/segments",
        "segment-new": "/segments/new",
        "suppression": "/suppression",
        "forms": "/forms",
        "fields": "/fields",
        "tokens": "/tokens",
        "users": "/users",
        "audit": "/audit",
        "audience-settings": "/audience-settings",
        "account": "/account",
        "sessions": "/account/sessions",
        "outbox": "/outbox",
    }
    problems = []
    for name, path in pages.items():
        problems += await _check_page(page, base, path, name, shots)
    assert not problems, "\n".join(problems)
