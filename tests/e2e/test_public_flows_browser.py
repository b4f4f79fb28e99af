"""Every page a mail link opens, walked in Chromium as people do it, the links taken from the caught mail."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from tests.support.browser import People, log_in
from tests.support.console import OWNER, PASSWORD, Console
from tests.support.mailbox import link_to, wait_for_mail


async def screenshot(page: Page, folder: Path, name: str) -> None:
    """Keep a picture of the page in the test's folder (pytest keeps the last runs'), to look at."""
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def outbox(console: Console) -> Path:
    """Where the catcher stores the mail it caught."""
    assert console.catcher.store_dir is not None
    return console.catcher.store_dir


async def create_list_with(page: Page, base: str, name: str, csv_text: str) -> int:
    """A list made on the lists page and filled by a CSV upload; its id."""
    await page.goto(f"{base}/lists")
    await page.fill("#list-name", name)
    await page.click("#create-list")
    await expect(page.locator("#csv-file")).to_be_attached()
    list_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    files = [{"name": "people.csv", "mimeType": "text/csv", "buffer": csv_text.encode()}]
    await page.set_input_files("#csv-file", files=files)
    await page.click("#upload-csv")
    await expect(page.locator("#import-progress")).to_have_attribute("data-state", "done")
    return list_id


async def assert_no_token_in_referers(people: People, tab: Page, *secret_prefixes: str) -> None:
    """No request this browser sent carried a mailed token in its Referer (the pages send the origin only)."""
    referers = await people.referers(tab)
    assert referers, "the forms on the mailed pages were posted with a Referer"
    leaks = [(what, referer) for what, referer in referers if any(p in referer for p in secret_prefixes)]
    assert leaks == []


async def test_signup_confirm_unsubscribe_page_and_one_click_in_chromium(make_site, people: People, tmp_path: Path):
    # The owner (in a Japanese browser) finds that a form needs a sender address, sets it, and publishes a
    # signup form. Hanako, in a Japanese Chromium too, signs up on the hosted page, opens the link in the
    # confirmation mail and presses the button: she is active on the list. From a campaign's
    # List-Unsubscribe link she opens the unsubscribe page and leaves one of her two lists only. Taro's
    # webmail (another site) posts the RFC 8058 one-click form: he is unsubscribed and suppressed. No
    # request carried a token in its Referer.
    console, base = await make_site()
    owner = await people.open(locale="ja-JP")
    await log_in(owner, base, OWNER, PASSWORD)
    await expect(owner.locator("#current-login")).to_have_text(OWNER)
    newsletter = await create_list_with(owner, base, "Newsletter", "email,name\ntaro@example.net,Taro\n")
    sale = await create_list_with(owner, base, "Sale", "email,name\nhanako@example.net,山田 花子\n")

    await owner.goto(f"{base}/forms")
    await expect(owner.locator("#forms-need-sender")).to_contain_text("差出人アドレスが必要です")
    await screenshot(owner, tmp_path, "forms-need-a-sender")
    await owner.click("#set-sender")
    await owner.fill("input[name=sender_address]", "news@news.example.com")
    await owner.fill("input[name=sender_name]", "Acme")
    await owner.click("#save-settings")
    await owner.goto(f"{base}/forms")
    await expect(owner.locator("#forms-need-sender")).to_have_count(0)
    await owner.fill("#form-name", "メルマガ登録")
    await owner.select_option("#form-list", str(newsletter))
    await owner.fill("textarea[name=thanks_text]", "ご登録ありがとうございます")
    await owner.click("#create-form")
    hosted = await owner.locator("#hosted-url").inner_text()
    assert hosted.startswith(f"{base}/f/")

    hanako = await people.open(locale="ja-JP")
    await hanako.goto(hosted)
    await hanako.fill("#signup-email", "hanako@example.net")
    await hanako.fill("input[name=name]", "山田 花子")
    await hanako.click("#signup-submit")
    await expect(hanako.locator("#public-message")).to_have_text("ご登録ありがとうございます")
    [confirmation] = await wait_for_mail(outbox(console), "hanako@example.net")
    assert confirmation["From"].addresses[0].addr_spec == "news@news.example.com"
    await hanako.goto(link_to(confirmation, "/c/"))
    await expect(hanako.locator("h1")).to_have_text("登録の確認")
    await screenshot(hanako, tmp_path, "confirm-page-ja")
    await hanako.click("#confirm-subscription")
    await expect(hanako.locator("#public-message")).to_have_text("ご登録ありがとうございます")
    on_lists = "SELECT ls.list_id FROM lists.list_subscriptions ls JOIN lists.subscribers s ON s.id = ls.subscriber_id"
    hanako_lists = f"{on_lists} WHERE s.email = 'hanako@example.net' ORDER BY 1"
    assert console.sql(hanako_lists) == [(newsletter,), (sale,)]
    assert console.sql("SELECT status FROM lists.subscribers WHERE email = 'hanako@example.net'") == [("active",)]

    await owner.goto(f"{base}/campaigns/new")
    await owner.fill("#campaign-name", "Spring")
    await owner.check(f"input[name=list_ids][value='{newsletter}']")
    await owner.fill("#from-address", "news@news.example.com")
    await owner.fill("#subject", "春のお知らせ")
    await owner.fill("#text-body", "{{ name }}様")
    await owner.click("#save-campaign")
    await owner.click("#send-campaign")
    await expect(owner.locator("#campaign-sent")).to_have_text("2", timeout=60_000)

    campaign_mail = (await wait_for_mail(outbox(console), "hanako@example.net", count=2))[1]
    await hanako.goto(link_to(campaign_mail, "/u/"))
    await expect(hanako.locator("main")).to_contain_text("hanako@example.net")
    await screenshot(hanako, tmp_path, "unsubscribe-page-ja")
    # Both lists come ticked; she keeps the sale mail and leaves the newsletter.
    await hanako.uncheck(f"input[name=list_ids][value='{sale}']")
    await hanako.click("#leave-chosen")
    await expect(hanako.locator("#public-message")).to_have_text("1 件のリストの配信を停止しました。")
    assert console.sql(hanako_lists) == [(sale,)]
    assert console.sql("SELECT status FROM lists.subscribers WHERE email = 'hanako@example.net'") == [("active",)]
    assert console.sql("SELECT count(*) FROM lists.suppressions") == [(0,)]
    await assert_no_token_in_referers(people, hanako, "/c/", "/u/")

    [taro_mail] = await wait_for_mail(outbox(console), "taro@example.net")
    assert taro_mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_url = link_to(taro_mail, "/u/")
    taro = await people.open()
    webmail = "https://webmail.example/"
    # The webmail's own page, on another site, posting the RFC 8058 form as its "unsubscribe" button does.
    await taro.route(
        webmail,
        lambda route: route.fulfill(
            content_type="text/html",
            body=(
                f'<form method="post" action="{unsubscribe_url}"><input type="hidden" name="List-Unsubscribe"'
                ' value="One-Click"><button id="webmail-unsubscribe">Unsubscribe</button></form>'
            ),
        ),
    )
    await taro.goto(webmail)
    await taro.click("#webmail-unsubscribe")
    await expect(taro.locator("#public-message")).to_have_text("You have been unsubscribed.")
    assert console.sql("SELECT status FROM lists.subscribers WHERE email = 'taro@example.net'") == [("unsubscribed",)]
    assert console.sql("SELECT reason FROM lists.suppressions WHERE email = 'taro@example.net'") == [("unsubscribed",)]


async def test_invitation_and_forgotten_password_in_chromium(make_site, people: People, tmp_path: Path):
    # The owner adds Nao with an invitation. In her own Chromium Nao opens the mailed link, switches the
    # page to Japanese, sets a password and logs in with it. Later she has forgotten it: she asks for a
    # link on the login page, opens it from the mail, sets a new password and logs in with that; the old
    # one no longer works. No request carried a reset token in its Referer.
    console, base = await make_site()
    owner = await people.open()
    await log_in(owner, base, OWNER, PASSWORD)
    await owner.goto(f"{base}/users")
    add = owner.locator("form[action='/users']")
    await add.locator("input[name=login]").fill("nao")
    await add.locator("input[name=email]").fill("nao@example.org")
    await add.locator("select[name=role]").select_option("editor")
    await add.locator("button[type=submit]").click()
    await expect(owner.locator("#users tr[data-login=nao]")).to_contain_text("no password yet")

    nao = await people.open()
    [invitation] = await wait_for_mail(outbox(console), "nao@example.org")
    await nao.goto(link_to(invitation, "/reset/"))
    await nao.click("button[name=language][value=ja]")
    await expect(nao.locator("h1")).to_have_text("新しいパスワードを設定")
    await screenshot(nao, tmp_path, "reset-page-ja")
    first_password = "quiet-harbor-58-meadow"
    await nao.fill("#new_password", first_password)
    await nao.fill("#confirm_password", first_password)
    await nao.click("main button[type=submit]")
    await expect(nao.locator(".flash")).to_have_text(
        "パスワードを設定しました。新しいパスワードでログインしてください。"
    )
    await log_in(nao, base, "nao", first_password)
    await expect(nao.locator("#current-login")).to_have_text("nao")
    await nao.click("#logout")

    await nao.goto(f"{base}/login")
    await nao.click("a[href='/forgot']")
    await nao.fill("#login", "nao")
    await nao.click("main button[type=submit]")
    await expect(nao.locator(".flash")).to_contain_text("新しいパスワードを設定するリンクを")
    reset_mail = (await wait_for_mail(outbox(console), "nao@example.org", count=2))[1]
    await nao.goto(link_to(reset_mail, "/reset/"))
    second_password = "amber-lighthouse-93-fern"
    await nao.fill("#new_password", second_password)
    await nao.fill("#confirm_password", second_password)
    await nao.click("main button[type=submit]")
    await expect(nao.locator(".flash")).to_have_text(
        "パスワードを設定しました。新しいパスワードでログインしてください。"
    )
    await log_in(nao, base, "nao", first_password)
    await expect(nao.locator("#login-error")).to_be_visible()
    await log_in(nao, base, "nao", second_password)
    await expect(nao.locator("#current-login")).to_have_text("nao")
    await assert_no_token_in_referers(people, nao, "/reset/")
