"""Open and click tracking in Chromium: the link taken from the caught mail, counted on the campaign's page."""

from __future__ import annotations

import email
import email.policy
import os
import re

from playwright.async_api import Page, expect

from tests.support.browser import log_in
from tests.support.console import OWNER, PASSWORD


def _html_of(message) -> str:
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    return parsed.get_body(("html",)).get_content()


async def test_a_tracked_link_from_the_mail_leads_to_its_page_and_is_counted_once(make_site, page: Page):
    # The owner sends a measured campaign with a web link, a mailto: link and a link marked
    # data-mb-notrack. In the delivered mail only the web link goes through /t/c/ and a pixel /t/o/ is
    # there. Opening the link in Chromium lands on the page it names; opening it four more times within a
    # minute counts nothing more; the pixel counts the open. The campaign page shows one person who opened,
    # one who clicked, and the link with its clicks. A token with a changed character is a 404 that
    # redirects nowhere.
    console, base = await make_site()
    await log_in(page, base, OWNER, PASSWORD)
    await page.goto(f"{base}/lists")
    await page.fill("#list-name", "Tracked")
    await page.click("#create-list")
    csv_data = b"email,name\nhanako@example.net,Hanako\n"
    await page.set_input_files("#csv-file", files=[{"name": "one.csv", "mimeType": "text/csv", "buffer": csv_data}])
    await page.click("#upload-csv")
    await expect(page.locator("#import-progress")).to_have_attribute("data-state", "done")

    target = f"{base}/healthz"
    await page.goto(f"{base}/campaigns/new")
    await page.fill("#campaign-name", "Measured")
    await page.check("input[name=list_ids]")
    await expect(page.locator("#tracking")).to_be_checked()
    await page.fill("#from-address", "news@news.example.com")
    await page.fill("#subject", "Hello {{ name }}")
    await page.fill(
        "#html-body",
        f'<html><body><p><a href="{target}">Our page</a> <a href="mailto:info@example.com">Write</a>'
        ' <a href="https://private.example.com/" data-mb-notrack>Private</a></p></body></html>',
    )
    await page.fill("#text-body", "Hello")
    await page.click("#save-campaign")
    campaign_url = page.url
    await page.click("#send-campaign")
    await expect(page.locator("#campaign-sent")).to_have_text("1", timeout=60_000)

    caught = [m for m in await console.catcher.wait_for(1) if "hanako@example.net" in m.rcpt_tos]
    html = _html_of(caught[0])
    clicks = re.findall(r'href="([^"]*/t/c/[^"]+)"', html)
    pixels = re.findall(r'src="([^"]*/t/o/[^"]+)"', html)
    assert len(clicks) == 1 and len(pixels) == 1 and target not in html
    assert 'href="mailto:info@example.com"' in html and 'href="https://private.example.com/"' in html
    assert "data-mb-notrack" not in html

    visitor = await page.context.new_page()
    for _ in range(5):
        await visitor.goto(clicks[0])
        await expect(visitor).to_have_url(target)
    answer = await visitor.goto(pixels[0])
    assert answer is not None and answer.ok and answer.headers["content-type"] == "image/gif"

    forged = clicks[0][:-2] + ("AA" if not clicks[0].endswith("AA") else "BB")
    refused = await visitor.goto(forged)
    assert refused is not None and refused.status == 404
    await expect(visitor).to_have_url(forged)

    await page.goto(campaign_url)
    await expect(page.locator("#opens-unique")).to_have_text("1")
    await expect(page.locator("#clicks-unique")).to_have_text("1")
    await expect(page.locator('#campaign-tracking [data-field="clicks_total"]')).to_have_text("1")
    row = page.locator("#link-clicks tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text(target)
    # The report: rates of the one recipient, the hourly chart and the provider table (example.net as is).
    await expect(page.locator("#chart-hourly svg rect.bar-opened").first).to_be_visible()
    await expect(page.locator("#providers tbody tr")).to_have_text(
        re.compile(r"example\.net\s*1\s*1\s*0\s*1\s*100\.0%")
    )
    shots = os.environ.get("MAILBLAST_SCREENSHOT_DIR")
    if shots:
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.screenshot(path=f"{shots}/campaign-tracked-1280.png", full_page=True)
