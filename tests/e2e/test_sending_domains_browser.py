"""The sending-domains page in a real Chromium, in Japanese: add a domain, copy its records, check them live."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from tests.support.browser import log_in
from tests.support.console import OWNER, PASSWORD

DOMAIN = "my-shop.co.jp"


async def screenshot(page: Page, folder: Path, name: str) -> None:
    """A full-page screenshot at the console's usual width, to look at."""
    await page.set_viewport_size({"width": 1280, "height": 900})
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def test_an_owner_adds_a_domain_copies_the_records_and_sees_it_verified(
    make_site, people, dns_server, tmp_path: Path
):
    # A Japanese owner adds my-shop.co.jp: the page lists every record to publish, each marked 未公開
    # with the reason; the copy button puts the exact value on the clipboard. Once the records are
    # published as shown, 今すぐ DNS を確認 marks them OK and the domain 認証済み, with the DMARC advice.
    dns_server.add_zone(DOMAIN)
    dns_server.add_zone("mailblast.example.com")
    dns_server.add_txt("_spf.mailblast.example.com", "v=spf1 ip4:192.0.2.0/24 -all")
    _, base = await make_site(campaigns_overrides={"dns_resolver": dns_server.address})
    owner = await people.open("ja-JP")
    await owner.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    await log_in(owner, base, OWNER, PASSWORD)
    await owner.goto(f"{base}/domains")
    await expect(owner.locator("h1")).to_have_text("送信ドメイン")
    await owner.fill("input[name=domain]", DOMAIN)
    await owner.click("#add-domain button")
    await expect(owner.locator("#domain-state")).to_have_text("未認証")
    rows = owner.locator("#records tbody tr")
    await expect(rows).to_have_count(7)
    dkim = owner.locator('tr[data-purpose="dkim-rsa"]')
    await expect(dkim.locator(".record-status")).to_have_text("未公開")
    await expect(dkim.locator(".record-problem")).to_have_text(
        f"mb1-rsa._domainkey.{DOMAIN} に DKIM 公開鍵が公開されていません"
    )
    await dkim.locator("td:nth-child(5) button.copy").click()
    await expect(dkim.locator("td:nth-child(5) button.copy")).to_have_class("copy copied")
    copied = await owner.evaluate("navigator.clipboard.readText()")
    assert copied == await dkim.locator("code.record-value").inner_text()
    assert copied.startswith("v=DKIM1; k=rsa; p=")
    await screenshot(owner, tmp_path, "domain-unverified-ja")

    # The customer publishes what the page shows.
    for index in range(await rows.count()):
        row = rows.nth(index)
        name = await row.locator("code.record-name").inner_text()
        value = await row.locator("code.record-value").inner_text()
        kind = await row.locator("td:nth-child(3) code").inner_text()
        if kind == "CNAME":
            dns_server.add(name, "CNAME", value + ".")
        else:
            dns_server.add_txt(name, value)
    await owner.click("#check-domain button")
    await expect(owner.locator("#domain-state")).to_have_text("認証済み")
    await expect(owner.locator('tr[data-purpose="spf"] .record-status')).to_have_text("OK")
    await expect(owner.locator('tr[data-purpose="dmarc"] .record-advice')).to_contain_text("p=none は監視のみです")
    await screenshot(owner, tmp_path, "domain-verified-ja")
    await owner.goto(f"{base}/domains")
    await expect(owner.locator("#domains tbody tr td").nth(1)).to_have_text("認証済み")
    print(f"screenshots in {tmp_path}")
