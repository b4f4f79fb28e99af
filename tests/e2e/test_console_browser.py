"""The console in a real headless Chromium (Debian's package) driven by Playwright, over HTTPS, on real services."""

from __future__ import annotations

import asyncio
import time

import pyotp
from playwright.async_api import Page, expect

from tests.support.browser import log_in
from tests.support.clock import MovableClock
from tests.support.console import OWNER, PASSWORD


async def test_lockout_totp_and_a_campaign_that_arrives_in_the_outbox(make_site, page: Page):
    # In a real browser that never logged in as bob: five wrong passwords and then the right one show the
    # lock (the right password from an unknown browser says "locked" like any other); the owner turns on
    # two-step verification and logs in with a code; creates a list, uploads a CSV (progress updated by
    # the console's script), composes and sends a campaign, watches the counters reach 2, and finds both
    # messages in the outbox, signed (DKIM pass) and delivered over TLS.
    console, base = await make_site()
    console.add_user("bob", "editor")
    await page.goto(f"{base}/campaigns")
    await expect(page).to_have_url(f"{base}/login?next=/campaigns")
    for _ in range(5):
        await log_in(page, base, "bob", "wrong-password-1")
        await expect(page.locator("#login-error")).to_contain_text("wrong")
    await log_in(page, base, "bob", PASSWORD)
    await expect(page.locator("#login-error")).to_contain_text("locked")

    await log_in(page, base, OWNER, PASSWORD)
    await expect(page.locator("#current-login")).to_have_text(OWNER)
    await page.goto(f"{base}/account/2fa")
    secret = await page.locator("#totp-secret").inner_text()
    await expect(page.locator(".qr svg")).to_be_visible()
    # Auth takes the previous, current and next step's code, each once. The current step's code confirms;
    # the next step's logs in: later than the step used, and in the window until two steps have passed.
    await page.fill("#code", pyotp.TOTP(secret).now())
    await page.click("#totp-confirm")
    await expect(page.locator("#recovery-codes li")).to_have_count(10)
    await page.click("#logout")
    await log_in(page, base, OWNER, PASSWORD)
    await expect(page).to_have_url(f"{base}/login/totp")
    await page.fill("#code", pyotp.TOTP(secret).at(time.time() + 30))
    await page.click("#totp-submit")
    await expect(page.locator("#current-login")).to_have_text(OWNER)

    await page.goto(f"{base}/lists")
    await page.fill("#list-name", "Browser list")
    await page.click("#create-list")
    csv_data = "email,name\nhanako@example.net,山田 花子\ntaro@example.net,Taro\n".encode()
    await page.set_input_files("#csv-file", files=[{"name": "people.csv", "mimeType": "text/csv", "buffer": csv_data}])
    await page.click("#upload-csv")
    await expect(page.locator("#import-progress")).to_have_attribute("data-state", "done")
    await expect(page.locator('#import-progress [data-field="rows_added"]')).to_have_text("2")

    await page.goto(f"{base}/campaigns/new")
    await page.fill("#campaign-name", "Browser campaign")
    await page.check("input[name=list_ids]")
    await page.fill("#from-address", "news@news.example.com")
    await page.fill("#subject", "{{ name }}様へのお知らせ")
    await page.fill("#html-body", "<p>{{ name }}様</p><script>document.title='pwned'</script>")
    await page.fill("#text-body", "{{ name }}様")
    await page.click("#save-campaign")
    await expect(page.locator("#campaign-state")).to_have_text("Draft")
    # Another tab sends it. This one, never reloaded, follows by itself: the counters and the state
    # change, and the buttons become those of a sent campaign (no send, pause or cancel left to press).
    await expect(page.locator("#send-campaign")).to_be_visible()
    await page.evaluate("window.notReloaded = true")
    other = await page.context.new_page()
    other.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await other.goto(page.url)
    await other.click("#send-campaign")
    await expect(page.locator("#campaign-sent")).to_have_text("2", timeout=60_000)
    await expect(page.locator("#campaign-state")).to_have_text("Sent")
    await expect(page.locator("#campaign-actions button")).to_have_count(0)
    await expect(page.locator("#send-test")).to_be_visible()
    assert await page.evaluate("window.notReloaded === true")
    await other.close()
    assert await page.title() != "pwned"

    await page.goto(f"{base}/outbox")
    rows = page.locator("#outbox tbody tr")
    await expect(rows).to_have_count(3)  # bob's lockout notice and the two campaign messages
    for address in ("hanako@example.net", "taro@example.net"):
        row = rows.filter(has_text=address)
        await expect(row.locator(".dkim .pass")).to_have_count(2)
        await expect(row.locator(".tls")).to_contain_text("TLS")


async def test_a_browser_that_logged_in_before_gets_in_while_strangers_locked_the_account(
    make_site, page: Page, stranger: Page
):
    # Alice logs in once in her own browser, and out again. A stranger's browser then tries five wrong
    # passwords for "alice": there even the right one shows the lock; a few more failures for made-up
    # logins from the same address (both browsers are on 127.0.0.1) throttle that address. Alice's
    # browser, which kept the console's device cookie, still logs in with her password.
    _console, base = await make_site(ip_failures_per_minute=8)
    await log_in(page, base, OWNER, PASSWORD)
    await expect(page.locator("#current-login")).to_have_text(OWNER)
    await page.click("#logout")
    await expect(page).to_have_url(f"{base}/login")

    for _ in range(5):
        await log_in(stranger, base, OWNER, "wrong-password-1")
        await expect(stranger.locator("#login-error")).to_contain_text("wrong")
    await log_in(stranger, base, OWNER, PASSWORD)
    await expect(stranger.locator("#login-error")).to_contain_text("locked for this browser")
    for n in range(3):
        await log_in(stranger, base, f"made-up-{n}", "wrong-password-1")
    await log_in(stranger, base, OWNER, PASSWORD)
    await expect(stranger.locator("#login-error")).to_contain_text("Too many failed logins from your address")

    await log_in(page, base, OWNER, PASSWORD)
    await expect(page.locator("#current-login")).to_have_text(OWNER)


async def test_idle_timeout_sends_the_browser_to_the_login_page_with_the_reason(make_site, page: Page):
    # With a 90-second idle timeout, a browser left alone for longer (auth's clock moved) lands on the
    # login page at its next click, told in its language that it was logged out for inactivity.
    clock = MovableClock()
    _console, base = await make_site(idle_timeout_seconds=90, clock=clock)
    await log_in(page, base, OWNER, PASSWORD)
    await expect(page.locator("#current-login")).to_have_text(OWNER)
    clock.advance(91)
    await page.goto(f"{base}/lists")
    await expect(page).to_have_url(f"{base}/login?next=/lists")
    await expect(page.locator(".flash")).to_have_text("You were logged out after 90 seconds of inactivity.")


async def test_a_field_label_is_text_in_the_segment_builder(make_site, people):
    # Mallory, an admin, names a custom field with markup that would close the field menu and add a
    # button posting the builder's form (with its CSRF token) to make her owner. When the owner opens the
    # segment builder in Chromium, the label reads as text in the menu, no such button or element exists,
    # and pressing the builder's own buttons leaves Mallory an admin.
    console, base = await make_site()
    mallory_id = console.add_user("mallory", "admin")
    payload = (
        f'</option></select><button form="segment-builder" formaction="/users/{mallory_id}/role" name="role"'
        ' value="owner" id="pwn">Preview</button><b id="bold">x</b>'
    )
    mallory = await people.open()
    await log_in(mallory, base, "mallory", PASSWORD)
    await mallory.goto(f"{base}/fields")
    await mallory.fill("#field-key", "plan")
    await mallory.fill("#field-label", payload)
    await mallory.click("#create-field")
    await expect(mallory.locator("#fields")).to_contain_text("formaction")

    owner = await people.open()
    await log_in(owner, base, OWNER, PASSWORD)
    await owner.goto(f"{base}/segments/new")
    field_menu = owner.locator("select[name=g0_r0_field]")
    await expect(field_menu.locator("option[value='custom:plan']")).to_have_text(payload)
    assert await owner.locator("#pwn, #bold, [formaction]").count() == 0
    await owner.click("#preview-segment")
    await expect(owner.locator("#segment-count")).to_be_visible()
    assert await owner.locator("#pwn, #bold, [formaction]").count() == 0
    assert console.sql("SELECT role FROM auth.users WHERE id = %s", (mallory_id,)) == [("admin",)]
