"""The web console's security rules, through Flask's test client, against real auth, lists, campaigns and sender."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import email
import email.policy
import io
import re
import smtplib
import time

import pyotp
import pytest

from services.gateway.app import create_app
from services.gateway.security import PUBLIC_ENDPOINTS
from tests.support.clock import MovableClock
from tests.support.console import (
    OWNER,
    PASSWORD,
    Console,
    Web,
    create_campaign,
    create_list,
)
from tests.support.poll import poll

NEW_PASSWORD = "amber-heron-92-quartz"


def text(response) -> str:
    """The response body as text."""
    return response.get_data(as_text=True)


async def logged_in(console: Console, login: str = OWNER, password: str = PASSWORD) -> Web:
    """A client logged in as this user."""
    web = console.client()
    response = await web.login(login, password)
    assert response.status_code == 302, text(response)
    return web


async def test_login_sets_a_new_hardened_session_and_logout_revokes_it(make_console):
    # Pages need a login; logging in gives a new session cookie that is Secure, HttpOnly, SameSite=Lax,
    # __Host- prefixed, for the whole site only; logging out revokes the session in auth, so the old
    # cookie value no longer opens anything even if it was copied.
    console = await make_console()
    web = console.client()
    first = await web.get("/campaigns")
    assert first.status_code == 302 and first.location.startswith("/login")
    await web.get(first.location)
    before = web.cookie("__Host-mailblast-session").value
    response = await web.login()
    assert response.status_code == 302 and response.location == "/campaigns"
    [set_cookie] = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("__Host-mailblast-session=")]
    for flag in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert flag in set_cookie, set_cookie
    assert "Domain=" not in set_cookie
    after = web.cookie("__Host-mailblast-session").value
    assert after != before
    page = await web.get("/campaigns")
    assert page.status_code == 200 and "alice" in text(page)

    stolen = console.client()
    stolen.client.set_cookie("__Host-mailblast-session", after, domain="localhost")
    assert (await stolen.get("/campaigns")).status_code == 200
    out = await web.post("/logout")
    assert out.status_code == 302 and out.location == "/login"
    assert console.sql("SELECT count(*) FROM auth.sessions WHERE revoked_at IS NULL")[0][0] == 0
    assert (await stolen.get("/campaigns")).status_code == 302
    assert (await web.get("/campaigns")).status_code == 302


async def test_every_route_needs_a_session_and_state_changes_need_post(make_console):
    # Every route but the public ones (login, password reset, language, health, static files) sends an
    # anonymous visitor to the login page, whatever the method; no route changes state on GET.
    console = await make_console()
    web = console.client()
    for rule in console.app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            call = web.get if method == "GET" else web.post
            response = await call(path)
            assert response.status_code == 302, (method, path, response.status_code)
            assert response.location.startswith("/login"), (method, path)
        if "POST" in rule.methods and "GET" not in rule.methods:
            assert (await web.get(path)).status_code in (302, 405), path
    # Forms shown by GET and handled by POST; every other route that accepts POST accepts nothing else.
    forms = {"account.login", "account.login_totp", "account.forgot", "account.reset", "account.password"}
    for rule in console.app.url_map.iter_rules():
        if "POST" in rule.methods and rule.endpoint not in forms | {"mail.new_campaign"}:
            assert rule.methods - {"HEAD", "OPTIONS"} == {"POST"}, rule.endpoint


async def test_five_failures_lock_the_account_until_an_admin_unlocks_it(make_console):
    # Five wrong passwords from a stranger's browser lock bob for browsers that never logged in as him:
    # the right password then gets the same lock message as a wrong one, bob is mailed, the audit log
    # has it. Bob's own browser, which logged in before and keeps the console's device cookie (Secure,
    # HttpOnly, SameSite=Strict, __Host-, long-lived), still gets in. The admin unlocks bob on the users
    # page and the stranger's browser logs in too.
    console = await make_console()
    bob = console.add_user("bob", "editor")
    own = console.client()
    first = await own.login("bob", PASSWORD)
    [device] = [c for c in first.headers.getlist("Set-Cookie") if c.startswith("__Host-mailblast-device=")]
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=34560000"):
        assert flag in device, device
    assert "Domain=" not in device
    await own.post("/logout")
    assert own.cookie("__Host-mailblast-device") is not None

    web = console.client()
    for _ in range(5):
        failed = await web.login("bob", "wrong-password-1")
        assert failed.status_code == 401
        assert "The login ID or password is wrong." in text(failed)
    locked, also_locked = await web.login("bob", PASSWORD), await web.login("bob", "wrong-password-1")
    assert locked.status_code == also_locked.status_code == 401
    assert "locked for this browser" in text(locked) and "locked for this browser" in text(also_locked)
    await poll(lambda: _mail_to(console, "bob@example.org"))
    assert (await own.login("bob", PASSWORD)).status_code == 302

    admin = await logged_in(console)
    users = text(await admin.get("/users"))
    assert f"/users/{bob}/unlock" in users
    audit = text(await admin.get("/audit?action=login.locked"))
    assert "login.locked" in audit and f"user:{bob}" in audit
    unlocked = await admin.post(f"/users/{bob}/unlock")
    assert unlocked.status_code == 302
    assert "The account was unlocked." in text(await admin.get("/users"))
    assert (await web.login("bob", PASSWORD)).status_code == 302


async def _mail_to(console: Console, address: str) -> list:
    return console.catcher.received_by().get(address, [])


def mail_text(caught) -> str:
    """The decoded text part of a caught message."""
    message = email.message_from_bytes(caught.data, policy=email.policy.default)
    return message.get_body(preferencelist=("plain",)).get_content()


async def test_no_enumeration_on_login_or_forgotten_password(make_console):
    # An unknown login and a wrong password get the same page and status; "forgot password" answers the
    # same for a login that exists and one that does not, and only the real one gets a mail, whose link
    # sets a new password once.
    console = await make_console()
    console.add_user("bob", "editor")
    web = console.client()
    unknown = await web.login("nobody-here", "wrong-password-1")
    wrong = await web.login("bob", "wrong-password-1")
    assert unknown.status_code == wrong.status_code == 401
    strip = lambda r: re.sub(r'value="[^"]*"', "", text(r))  # noqa: E731 - the CSRF token and login differ
    assert strip(unknown) == strip(wrong)

    answers = []
    for login in ("nobody-here", "bob"):
        response = await web.post("/forgot", {"login": login})
        assert response.status_code == 302 and response.location == "/login"
        answers.append(strip(await web.get("/login")))
    assert answers[0] == answers[1]
    assert "If this login ID exists" in answers[0]
    mails = await poll(lambda: _mail_to(console, "bob@example.org"))
    body = mail_text(mails[0])
    link = re.search(r"https://localhost/reset/([A-Za-z0-9_\-]+)", body)
    assert link, body
    path = f"/reset/{link.group(1)}"
    page = await web.get(path)
    assert page.headers["Referrer-Policy"] == "strict-origin"
    done = await web.post(path, {"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD})
    assert done.status_code == 302
    again = await web.post(path, {"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD})
    assert again.status_code == 400 and "expired or was already used" in text(again)
    assert (await web.login("bob", NEW_PASSWORD)).status_code == 302
    assert console.catcher.received_by().get("nobody-here", []) == []


async def test_idle_and_absolute_timeouts_end_at_the_login_page_with_a_message(make_console):
    # After 30 minutes unused (auth's clock moved) the next page is the login page saying why, in the
    # user's language; after the absolute limit likewise.
    clock = MovableClock()
    console = await make_console(clock=clock)
    web = await logged_in(console)
    await web.post("/language", {"language": "ja"})
    clock.advance(minutes=31)
    response = await web.get("/lists")
    assert response.status_code == 302 and response.location.startswith("/login")
    page = text(await web.get(response.location))
    assert "30 分 操作がなかったため、ログアウトしました。" in page

    await web.post("/language", {"language": "en"})
    web2 = await logged_in(console)
    clock.advance(hours=13)
    response = await web2.get("/campaigns")
    assert response.status_code == 302
    assert "maximum length" in text(await web2.get(response.location))


async def test_password_change_ends_the_other_sessions(make_console):
    # Changing the password asks for the current one; it ends the user's other sessions (the other
    # browser lands on the login page) and keeps this one.
    console = await make_console()
    here = await logged_in(console)
    there = await logged_in(console)
    wrong = await here.post(
        "/account/password",
        {"current_password": "not-it-at-all", "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
    )
    assert wrong.status_code == 400 and "The current password is wrong." in text(wrong)
    weak = await here.post(
        "/account/password", {"current_password": PASSWORD, "new_password": "password", "confirm_password": "password"}
    )
    assert weak.status_code == 400
    assert "too easy to guess (strength 0 of 4, 3 needed): This is a top-10 common password." in text(weak)
    await here.post("/language", {"language": "ja"})
    weak = await here.post(
        "/account/password", {"current_password": PASSWORD, "new_password": "aaaaaaaa", "confirm_password": "aaaaaaaa"}
    )
    assert weak.status_code == 400
    assert (
        "パスワードが推測されやすすぎます (強度 0/4、3 以上が必要): 「aaa」のような繰り返しは推測されやすいです。 "
        "単語をもう 1 つか 2 つ加えてください。あまり使われない単語ほど効果的です。 "
        "単語や文字の繰り返しは避けてください。"
    ) in text(weak)
    await here.post("/language", {"language": "en"})
    done = await here.post(
        "/account/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
    )
    assert done.status_code == 302
    assert "Other sessions ended: 1." in text(await here.get("/account"))
    ended = await there.get("/campaigns")
    assert ended.status_code == 302
    assert "Your session was ended" in text(await there.get(ended.location))
    assert (await here.get("/campaigns")).status_code == 200


async def test_totp_setup_login_with_code_and_recovery_code(make_console):
    # A user turns on TOTP from a QR code (SVG) and gets ten recovery codes once; the next login asks for
    # a code: a wrong one is refused, a right one lets in; a recovery code works once.
    console = await make_console()
    web = await logged_in(console)
    setup = text(await web.get("/account/2fa"))
    assert "<svg" in setup
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', setup).group(1)
    totp = pyotp.TOTP(secret)
    confirmed = await web.post("/account/2fa/confirm", {"code": totp.at(time.time() - 30)})
    codes = re.findall(r"<li><code>([^<]+)</code></li>", text(confirmed))
    assert len(codes) == 10
    await web.post("/logout")

    step_one = await web.login()
    assert step_one.location == "/login/totp"
    assert (await web.get("/campaigns")).status_code == 302, "no session before the second step"
    bad = await web.post("/login/totp", {"code": "000000"})
    assert bad.status_code == 401
    good = await web.post("/login/totp", {"code": totp.now()})
    assert good.status_code == 302 and (await web.get("/campaigns")).status_code == 200

    other = console.client()
    await other.login()
    assert (await other.post("/login/totp", {"recovery_code": codes[0]})).status_code == 302
    third = console.client()
    await third.login()
    assert (await third.post("/login/totp", {"recovery_code": codes[0]})).status_code == 401


async def test_organisation_requiring_totp_confines_users_to_setup(make_console):
    # When the admin requires two-step verification, a user without it can only reach the set-up page
    # after login; once set up, the console opens with a new session.
    console = await make_console()
    admin = await logged_in(console)
    console.add_user("bob", "editor")
    assert (await admin.post("/settings", {"require_totp": "1"})).status_code == 302
    web = console.client()
    response = await web.login("bob", PASSWORD)
    assert response.location == "/account/2fa"
    for path in ("/campaigns", "/lists", "/account/password"):
        blocked = await web.get(path)
        assert blocked.status_code == 302 and blocked.location == "/account/2fa", path
    setup = text(await web.get("/account/2fa"))
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', setup).group(1)
    old = web.cookie("__Host-mailblast-session").value
    await web.post("/account/2fa/confirm", {"code": pyotp.TOTP(secret).now()})
    assert web.cookie("__Host-mailblast-session").value != old
    assert (await web.get("/campaigns")).status_code == 200


async def test_roles_are_enforced_on_routes_not_just_menus(make_console):
    # A viewer reads but cannot create, send or administer; an editor composes and sends but cannot
    # administer; an admin can do everything. Forbidden routes answer 403 even when typed in.
    console = await make_console()
    console.add_user("vic", "viewer")
    console.add_user("eddie", "editor")
    viewer = await logged_in(console, "vic")
    editor = await logged_in(console, "eddie")
    admin = await logged_in(console)
    admin_pages = ["/users", "/audit", "/audit.csv", "/outbox"]
    for path in ["/campaigns", "/lists"]:
        assert (await viewer.get(path)).status_code == 200
    assert "/campaigns/new" not in text(await viewer.get("/campaigns"))
    assert (await viewer.get("/campaigns/new")).status_code == 403
    assert (await viewer.post("/lists", {"name": "nope"})).status_code == 403
    assert (await viewer.post("/campaigns/1/send")).status_code == 403
    assert (await viewer.post("/campaigns/1/test", {"to_address": "x@example.org"})).status_code == 403
    for path in admin_pages:
        assert (await viewer.get(path)).status_code == 403, path
        assert (await editor.get(path)).status_code == 403, path
        assert (await admin.get(path)).status_code == 200, path
    assert (await editor.post("/users", {"login": "zed", "email": "z@example.org", "role": "admin"})).status_code == 403
    # The tokens page is everyone's, for their own tokens only: naming alice's user id changes nothing.
    assert (await viewer.get("/tokens")).status_code == 200
    assert (await editor.post("/tokens", {"user_id": "1", "name": "t", "scopes": ["read"]})).status_code == 200
    assert console.sql(
        "SELECT u.login FROM auth.api_tokens t JOIN auth.users u ON u.id = t.user_id WHERE t.name = 't'"
    ) == [("eddie",)]
    assert (await editor.get("/campaigns/new")).status_code == 200
    created = await editor.post("/lists", {"name": "Editors' list"})
    assert created.status_code == 302
    assert "Users" not in text(await editor.get("/campaigns"))
    assert console.sql("SELECT count(*) FROM auth.users WHERE login = 'zed'")[0][0] == 0


async def test_another_organisations_objects_are_404(make_console):
    # An admin of another organisation, typing this organisation's ids into the address bar or forms,
    # gets 404 for its lists, campaigns, previews, progress, imports and users, and changes nothing.
    console = await make_console()
    owner = await logged_in(console)
    list_id = await create_list(owner, "Acme customers")
    campaign_id = await create_campaign(owner, list_id)
    other = console.add_organization("Other KK")
    console.add_user("mallory", "admin", organization_id=other)
    bob = console.add_user("bob", "editor")
    intruder = await logged_in(console, "mallory")
    for path in (
        f"/lists/{list_id}",
        f"/campaigns/{campaign_id}",
        f"/campaigns/{campaign_id}/preview",
        f"/campaigns/{campaign_id}/progress.json",
        f"/lists/{list_id}/imports/1",
    ):
        response = await intruder.get(path)
        assert response.status_code == 404, path
        assert "another organisation" in text(response)
    for path, form in (
        (f"/campaigns/{campaign_id}/send", {}),
        (f"/campaigns/{campaign_id}/test", {"to_address": "m@example.org"}),
        (f"/lists/{list_id}/upload", {}),
        (f"/users/{bob}/disable", {}),
        (f"/users/{bob}/role", {"role": "viewer"}),
        (f"/users/{bob}/reset", {}),
        (f"/users/{bob}/unlock", {}),
    ):
        response = await intruder.post(path, form)
        assert response.status_code in (404, 302), path
        if response.status_code == 302:
            assert "Refused" in text(await intruder.get(response.location)) or path.endswith("/upload")
    assert console.sql("SELECT role, disabled_at FROM auth.users WHERE id = %s", (bob,)) == [("editor", None)]
    listed = text(await intruder.get("/campaigns"))
    assert "Acme customers" not in listed and "Spring sale" not in listed
    assert "bob" not in text(await intruder.get("/users"))


async def test_csrf_token_is_required_on_every_state_change(make_console):
    # A form posted without this session's CSRF token (a forged cross-site request, or another
    # session's token) is refused with 400 and changes nothing; logout without it does not log out.
    console = await make_console()
    web = await logged_in(console)
    other = await logged_in(console)
    foreign = await other.csrf_token()
    missing = await web.post("/lists", {"name": "forged"}, csrf=False)
    assert missing.status_code == 400 and "CSRF" in text(missing)
    wrong = await web.post("/lists", {"name": "forged", "csrf_token": foreign})
    assert wrong.status_code == 400
    assert (await web.post("/logout", csrf=False)).status_code == 400
    assert (await web.get("/campaigns")).status_code == 200
    assert "forged" not in text(await web.get("/lists"))


async def test_security_headers_and_no_inline_script(make_console):
    # Every page carries a CSP without inline script, nosniff, frame-ancestors none, a Referrer-Policy
    # and HSTS, and is not cached; no page contains an inline script or event handler.
    console = await make_console()
    web = await logged_in(console)
    list_id = await create_list(web, "Headers")
    campaign_id = await create_campaign(web, list_id)
    for path in ("/login", "/campaigns", f"/campaigns/{campaign_id}", "/lists", "/users", "/tokens", "/audit"):
        response = await web.get(path)
        assert response.status_code == 200, path
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert response.headers["Cache-Control"] == "no-store"
        body = text(response)
        assert not re.search(r"<script(?![^>]*\bsrc=)", body), path
        assert not re.search(r"\son[a-z]+=", body), path


async def test_campaign_preview_is_sandboxed_and_user_text_is_escaped(make_console):
    # A campaign whose HTML carries a script is previewed in an iframe with an empty sandbox (no
    # allow-scripts, no allow-same-origin) from a route whose CSP is "sandbox", so the script never runs in
    # the console's origin; names with markup are shown as text everywhere in the console.
    console = await make_console()
    web = await logged_in(console)
    list_id = await create_list(web, "<img src=x onerror=alert(1)>")
    lists_page = text(await web.get("/lists"))
    assert "<img src=x" not in lists_page and "&lt;img src=x onerror=alert(1)&gt;" in lists_page
    campaign_id = await create_campaign(
        web, list_id, name="<b>bold</b>", html_body="<script>parent.alert(1)</script><p>Hi {{ name }}</p>"
    )
    page = text(await web.get(f"/campaigns/{campaign_id}"))
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>parent.alert" not in page
    frame = re.search(r"<iframe[^>]*>", page).group(0)
    assert 'sandbox=""' in frame and "allow-scripts" not in frame
    assert f'src="/campaigns/{campaign_id}/preview"' in frame
    preview = await web.get(f"/campaigns/{campaign_id}/preview")
    csp = preview.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox;") and "allow-scripts" not in csp and "allow-same-origin" not in csp
    # The list has nobody yet: the personal fields are empty, never the logged-in user's.
    assert "<p>Hi </p>" in text(preview) and "alice" not in text(preview)


async def test_upload_compose_test_send_progress_audit_and_outbox(make_console):
    # An editor uploads a CSV (a background import), sees the subscribers active, composes a campaign,
    # sends a test to one address, sends it; the progress JSON reaches "sent" for both recipients, the
    # mails arrive signed over TLS, the send is in the audit log, and the outbox shows DKIM pass and TLS.
    console = await make_console()
    console.add_user("eddie", "editor")
    editor = await logged_in(console, "eddie")
    list_id = await create_list(editor, "Customers")
    csv_data = "email,name,company\nhanako@example.net,山田 花子,ACME\ntaro@example.net,Taro,Beta\n".encode()
    upload = await editor.post(
        f"/lists/{list_id}/upload",
        {"file": (io.BytesIO(csv_data), "customers.csv")},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 302, text(upload)
    progress_url = upload.location + ".json"

    async def imported():
        data = (await editor.get(progress_url)).get_json()
        return data if data["finished"] else None

    job = await poll(imported)
    assert job["state"] == "done" and job["rows_added"] == 2
    subscribers = text(await editor.get(f"/lists/{list_id}"))
    assert "hanako@example.net" in subscribers and "山田 花子" in subscribers and "status-active" in subscribers

    campaign_id = await create_campaign(editor, list_id, subject="{{ name }}様へ", html_body="<p>{{ name }}</p>")
    # The page previews as the list's first subscriber, or as the one chosen; the test goes out as that one.
    page = text(await editor.get(f"/campaigns/{campaign_id}"))
    options = dict(re.findall(r'<option value="([0-9]+)" (?:selected)?>([^&<]+) &lt;', page))
    taro = int(next(i for i, name in options.items() if name == "Taro"))
    first = next(iter(options.values()))
    assert f"<p>{first}</p>" in text(await editor.get(f"/campaigns/{campaign_id}/preview"))
    assert "<p>Taro</p>" in text(await editor.get(f"/campaigns/{campaign_id}/preview?subscriber={taro}"))
    assert f'name="subscriber" value="{taro}"' in text(await editor.get(f"/campaigns/{campaign_id}?subscriber={taro}"))
    tested = await editor.post(f"/campaigns/{campaign_id}/test", {"to_address": "qa@example.org", "subscriber": taro})
    assert tested.status_code == 302
    test_mail = (await poll(lambda: _mail_to(console, "qa@example.org")))[0]
    assert test_mail.tls
    tested_message = email.message_from_bytes(test_mail.data, policy=email.policy.default)
    assert tested_message["Subject"] == "Taro様へ" and "eddie" not in tested_message.as_string()
    # Another organisation's subscriber is nobody to preview as here.
    other_org = console.add_organization("Other")
    outsider = console.sql(
        "INSERT INTO lists.subscribers (organization_id, email) VALUES (%s, 'x@example.org') RETURNING id",
        (other_org,),
    )[0][0]
    assert (await editor.get(f"/campaigns/{campaign_id}/preview?subscriber={outsider}")).status_code == 404

    sent = await editor.post(f"/campaigns/{campaign_id}/send")
    assert sent.status_code == 302

    async def finished():
        data = (await editor.get(f"/campaigns/{campaign_id}/progress.json")).get_json()
        return data if data["sent"] == 2 else None

    progress = await poll(finished, timeout=60)
    assert progress["total"] == 2
    received = console.catcher.received_by()
    delivered = email.message_from_bytes(received["hanako@example.net"][0].data, policy=email.policy.default)
    assert delivered["Subject"] == "山田 花子様へ"

    admin = await logged_in(console)
    audit = text(await admin.get("/audit?action=campaign."))
    assert "campaign.sent" in audit and f"campaign:{campaign_id}" in audit and "eddie" in audit
    outbox = text(await admin.get("/outbox"))
    assert "hanako@example.net" in outbox and "qa@example.org" in outbox
    assert 'class="fail"' not in outbox and outbox.count('class="pass"') >= 6
    name = re.search(r'href="/outbox/([0-9]+-[0-9]+)"', outbox).group(1)
    detail = await admin.get(f"/outbox/{name}")
    assert "DKIM-Signature" in text(detail) and "TLSv1" in text(detail)
    frame = await admin.get(f"/outbox/{name}/html")
    assert frame.headers["Content-Security-Policy"].startswith("sandbox;")


async def test_api_tokens_shown_once_listed_with_last_use_and_revoked(make_console):
    # An admin creates a token for herself with scopes: the page offers no one else to make it for; the
    # secret is on that one page; the list shows its prefix and "never" used, never the secret; revoking
    # marks it revoked. Token changes are audited. An editor's page offers only the scopes of an editor
    # and lists only the editor's own tokens.
    console = await make_console()
    admin = await logged_in(console)
    form = text(await admin.get("/tokens"))
    assert 'name="user_id"' not in form and "A token acts as you (alice)" in form
    created = await admin.post("/tokens", {"name": "ci", "scopes": ["read", "send"]})
    assert created.status_code == 200
    secret = re.search(r'id="token-secret">([^<]+)<', text(created)).group(1)
    listing = text(await admin.get("/tokens"))
    assert (
        secret not in listing and "ci" in listing and ">Read<" in listing and ">Send<" in listing and "never" in listing
    )
    token_id = console.sql("SELECT id FROM auth.api_tokens WHERE name = 'ci'")[0][0]
    assert (await admin.post(f"/tokens/{token_id}/revoke")).status_code == 302
    assert "revoked" in text(await admin.get("/tokens"))
    audit = text(await admin.get("/audit?action=api_token."))
    assert "api_token.created" in audit and "api_token.revoked" in audit

    console.add_user("eddie", "editor")
    editor = await logged_in(console, "eddie")
    page = text(await editor.get("/tokens"))
    assert 'value="send"' in page and 'value="admin"' not in page and "ci" not in page
    refused = await editor.post("/tokens", {"name": "sneaky", "scopes": ["admin"]})
    assert refused.status_code == 302
    assert "more than a user with role &#39;editor&#39; may have" in text(await editor.get("/tokens"))


async def test_users_invite_role_change_and_disable(make_console):
    # An admin adds a user with an invitation (mailed), changes a role, and disables a user, whose open
    # session ends at once.
    console = await make_console()
    admin = await logged_in(console)
    added = await admin.post(
        "/users", {"login": "newbie", "email": "newbie@example.org", "role": "viewer", "send_invite": "1"}
    )
    assert added.status_code == 302
    invite = (await poll(lambda: _mail_to(console, "newbie@example.org")))[0]
    assert "/reset/" in mail_text(invite)
    bob = console.add_user("bob", "editor")
    bob_web = await logged_in(console, "bob")
    assert (await admin.post(f"/users/{bob}/role", {"role": "viewer"})).status_code == 302
    assert (await bob_web.get("/campaigns/new")).status_code == 403
    assert (await admin.post(f"/users/{bob}/disable")).status_code == 302
    assert (await bob_web.get("/campaigns")).status_code == 302
    assert (await bob_web.login("bob", PASSWORD)).status_code == 401


async def test_the_outbox_shows_each_organisation_only_its_own_mail(make_console):
    # Two organisations share the development SMTP catcher. Acme's owner invites Nina; the other
    # organisation's owner, Olga, has a reset link mailed to her. Each owner's outbox lists only their own
    # organisation's mail, and the other's message, its headers and its HTML are 404 by name, so neither
    # reads the other's link. Mail sent to the catcher from outside, with a Message-ID made up to name an
    # organisation, is shown to no one.
    console = await make_console()
    other = console.add_organization("Other KK")
    console.add_user("olga", "owner", organization_id=other)
    acme = await logged_in(console)
    olga = await logged_in(console, "olga")
    await acme.post("/users", {"login": "nina", "email": "nina@example.org", "role": "viewer", "send_invite": "1"})
    await console.client().post("/forgot", {"login": "olga"})
    invitation = (await poll(lambda: _mail_to(console, "nina@example.org")))[0]
    reset = (await poll(lambda: _mail_to(console, "olga@example.org")))[0]
    forged = (
        "From: a@example.com\r\nTo: mallory@example.org\r\nSubject: forged\r\n"
        f"Message-ID: <tx.{console.organization_id}.aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbb@mail.example.com>\r\n"
        "\r\nhello\r\n"
    )
    await asyncio.to_thread(_send_to_catcher, console.catcher.port, "mallory@example.org", forged)
    await console.catcher.wait_for(3)

    acme_outbox = text(await acme.get("/outbox"))
    olga_outbox = text(await olga.get("/outbox"))
    assert "nina@example.org" in acme_outbox and "olga@example.org" not in acme_outbox
    assert "olga@example.org" in olga_outbox and "nina@example.org" not in olga_outbox
    assert "mallory@example.org" not in acme_outbox and "mallory@example.org" not in olga_outbox
    [acme_mail] = re.findall(r'href="/outbox/([0-9]+-[0-9]+)"', acme_outbox)
    [olga_mail] = re.findall(r'href="/outbox/([0-9]+-[0-9]+)"', olga_outbox)
    assert "/reset/" in text(await acme.get(f"/outbox/{acme_mail}"))
    assert "/reset/" in text(await olga.get(f"/outbox/{olga_mail}"))
    for path in (f"/outbox/{olga_mail}", f"/outbox/{olga_mail}/html"):
        refused = await acme.get(path)
        assert refused.status_code == 404 and mail_text(reset).split("/reset/")[1][:20] not in text(refused)
    for path in (f"/outbox/{acme_mail}", f"/outbox/{acme_mail}/html"):
        refused = await olga.get(path)
        assert refused.status_code == 404 and mail_text(invitation).split("/reset/")[1][:20] not in text(refused)


def _send_to_catcher(port: int, recipient: str, message: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("a@example.com", [recipient], message.encode())


async def test_an_id_past_int64_in_an_address_is_a_plain_404(make_console):
    # A logged-in admin typing (or a script sending) a number no int64 id can be gets the ordinary "does
    # not exist" page, for pages and form posts alike, never a server error; the largest int64 is simply
    # not found either.
    console = await make_console()
    admin = await logged_in(console)
    for path in ("/lists/99999999999999999999", "/campaigns/9223372036854775808", "/subscribers/1" + "0" * 30):
        response = await admin.get(path)
        assert response.status_code == 404 and "does not exist" in text(response), path
    assert (await admin.get("/lists/9223372036854775807")).status_code == 404
    refused = await admin.post("/users/99999999999999999999/role", {"role": "viewer"})
    assert refused.status_code == 404 and "does not exist" in text(refused)


async def test_a_bad_number_in_a_form_or_query_is_a_400(make_console):
    # Numbers a page sends back (ids, the segment builder's row and group counts) that are not numbers or
    # no int64 id can be are refused as a bad request, never a server error; a huge count is capped.
    console = await make_console()
    admin = await logged_in(console)
    huge = "99999999999999999999"
    assert (await admin.get(f"/subscribers?list_id={huge}")).status_code == 400
    assert (await admin.get("/subscribers?list_id=abc")).status_code == 400
    await admin.get("/campaigns/new")
    assert (await admin.post("/campaigns/new", {"name": "x", "list_ids": huge})).status_code == 400
    await admin.get("/forms")
    assert (await admin.post("/forms", {"list_id": "1e3", "name": "x"})).status_code == 400
    await admin.get("/segments/new")
    assert (await admin.post("/segments/build", {"groups": "abc"})).status_code == 400
    assert (await admin.post("/segments/build", {"segment_id": huge})).status_code == 400
    capped = await admin.post("/segments/build", {"groups": huge, "action": "preview"})
    assert capped.status_code == 200
    # "0" is how a page says "none yet" (a new segment's hidden id).
    assert (await admin.post("/segments/build", {"segment_id": "0", "action": "preview"})).status_code == 200


async def test_audit_log_filters_pages_and_exports_csv(make_console):
    # The audit log filters by action prefix and day, and the CSV export streams every matching event
    # with time, user and source address.
    console = await make_console()
    admin = await logged_in(console)
    web = console.client()
    await web.login(OWNER, "wrong-password-1")
    page = text(await admin.get("/audit?action=login."))
    assert "login.succeeded" in page and "login.failed" in page
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert "login.succeeded" in text(await admin.get(f"/audit?action=login.&since={today}&until={today}"))
    assert "login.succeeded" not in text(await admin.get("/audit?since=2001-01-01&until=2001-01-02"))
    exported = await admin.get("/audit.csv?action=login.")
    assert exported.mimetype == "text/csv"
    assert "attachment" in exported.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(text(exported).lstrip("\ufeff"))))
    assert rows[0][:5] == ["id", "at", "user_id", "source_ip", "action"]
    assert {r[4] for r in rows[1:]} >= {"login.succeeded"}
    assert all(r[3] == "127.0.0.1" for r in rows[1:] if r[4] == "login.succeeded")


async def test_the_client_address_comes_from_trusted_proxies_only(make_console):
    # Behind an Ingress (GATEWAY_TRUSTED_PROXIES=1) a login is recorded with the address the proxy appended
    # to X-Forwarded-For, not the proxy's own; whatever the client put in front of it is ignored. Without
    # trusted proxies the header is the client's own words and is ignored altogether.
    console = await make_console()
    behind_proxy = create_app(
        {"TESTING": True}, settings=dataclasses.replace(console.app.config["MAILBLAST"], trusted_proxies=1)
    )
    for app, expected in ((behind_proxy, "203.0.113.9"), (console.app, "10.1.2.3")):
        web = Web(app.test_client())
        # What the Ingress at 10.1.2.3 passes on for a client at 203.0.113.9 that forged its own header.
        web.client.environ_base.update(REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.9")
        assert (await web.login()).status_code == 302
        exported = await web.get("/audit.csv?action=login.succeeded")
        rows = list(csv.reader(io.StringIO(text(exported).lstrip("\ufeff"))))
        assert rows[1][3] == expected, rows[:2]


async def test_language_choice_is_remembered_per_browser(make_console):
    # Choosing 日本語 stores the choice in a __Host- cookie; pages are then Japanese until English is chosen.
    console = await make_console()
    web = await logged_in(console)
    assert "Campaigns" in text(await web.get("/campaigns"))
    response = await web.post("/language", {"language": "ja", "next": "/campaigns"})
    assert response.location == "/campaigns"
    assert "__Host-mailblast-lang=ja" in response.headers["Set-Cookie"]
    assert "Secure" in response.headers["Set-Cookie"]
    page = text(await web.get("/campaigns"))
    assert "キャンペーン" in page and 'lang="ja"' in page
    evil = await web.post("/language", {"language": "en", "next": "//evil.example/"})
    assert evil.location == "/"


@pytest.mark.parametrize("path", ["/login", "/forgot"])
async def test_public_pages_render_in_both_languages(make_console, path):
    # The pages reachable without a session render in Japanese for a Japanese browser and in English otherwise.
    console = await make_console()
    web = console.client()
    ja = text(await web.get(path, headers={"Accept-Language": "ja,en;q=0.5"}))
    en = text(await web.get(path, headers={"Accept-Language": "en-US"}))
    assert "ログイン ID" in ja and "Login ID" in en
