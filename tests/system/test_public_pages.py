"""Subscribers' public pages on the real HTTPS server (cheroot) over real services: one-click and chosen
unsubscribe, hosted signup with double opt-in through the real SMTP catcher."""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.client
import re
import ssl
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest_asyncio

from services.common.verp import RecipientRef, unsubscribe_token
from services.gateway.server import ConsoleServer
from tests.support.console import Console, Web, start_console
from tests.support.poll import poll


@pytest_asyncio.fixture
async def site(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path: Path):
    """The services with the console served over HTTPS on a free port; yields (console, port)."""
    console = await start_console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path / "outbox")
    server = ConsoleServer(console.app, "127.0.0.1", 0, tls_files[0], tls_files[1])
    server.start()
    try:
        yield console, server.port
    finally:
        await asyncio.to_thread(server.stop)
        await console.stop()


def raw_request(
    port: int, context: ssl.SSLContext, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict[str, str], str]:
    """One request on a fresh TLS connection with no cookies at all, as a mail provider's robot sends it."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


async def one_click(port: int, context: ssl.SSLContext, token: str, multipart: bool = False):
    """The RFC 8058 POST: List-Unsubscribe=One-Click, form-encoded or multipart."""
    if multipart:
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n'
            f"--{boundary}--\r\n"
        ).encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    else:
        body, content_type = b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"
    return await asyncio.to_thread(
        raw_request, port, context, "POST", f"/u/{token}", body, {"Content-Type": content_type}
    )


async def logged_in(console: Console) -> Web:
    """The organisation's owner in the console."""
    web = console.client()
    assert (await web.login()).status_code == 302
    return web


async def make_list(web: Web, name: str, csv_text: str) -> int:
    """A list filled by a CSV upload, waited for until imported."""
    created = await web.post("/lists", {"name": name})
    list_id = int(created.location.rsplit("/", 1)[1])
    upload = await web.post(
        f"/lists/{list_id}/upload",
        {"file": (__import__("io").BytesIO(csv_text.encode()), "people.csv")},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 302

    async def imported():
        data = (await web.get(upload.location + ".json")).get_json()
        return data if data["finished"] else None

    assert (await poll(imported))["state"] == "done"
    return list_id


async def send_campaign(web: Web, list_id: int, subject: str) -> int:
    """Compose and send a campaign to one list."""
    created = await web.post(
        "/campaigns/new",
        {
            "name": subject, "list_ids": str(list_id), "from_name": "Acme", "from_address": "news@news.example.com",
            "subject": subject, "text_body": "Hello {{ name }}",
        },
    )  # fmt: skip
    assert created.status_code == 302, created.get_data(as_text=True)
    campaign_id = int(created.location.rsplit("/", 1)[1])
    assert (await web.post(f"/campaigns/{campaign_id}/send")).status_code == 302
    return campaign_id


def subject_of(caught) -> str:
    """The decoded Subject of a caught message."""
    return str(email.message_from_bytes(caught.data, policy=email.policy.default)["Subject"])


async def test_one_click_unsubscribe_by_raw_post_takes_effect_before_the_answer(site, client_tls_context):
    # A campaign message carries List-Unsubscribe with a signed token. A mail provider POSTs
    # "List-Unsubscribe=One-Click" to it over TLS with no cookie, no CSRF token and no page visit
    # (form-encoded for one recipient, multipart for another): the answer is 200 without setting a
    # cookie, and by the time it arrives the subscriber is unsubscribed and the address suppressed. A
    # following campaign reaches only the remaining subscriber. A forged token answers 404 saying nothing.
    console, port = site
    web = await logged_in(console)
    list_id = await make_list(
        web, "News", "email,name\nhanako@example.net,山田 花子\njiro@example.net,Jiro\ntaro@example.net,Taro\n"
    )
    await send_campaign(web, list_id, "First")
    received = await poll(lambda: _all_received(console, 3))
    tokens = {}
    for address in ("hanako@example.net", "jiro@example.net"):
        message = email.message_from_bytes(received[address][0].data, policy=email.policy.default)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        tokens[address] = re.search(r"/u/([^>]+)>", message["List-Unsubscribe"]).group(1)

    status, headers, body = await one_click(port, client_tls_context, tokens["hanako@example.net"])
    assert status == 200 and "unsubscribed" in body.lower()
    assert "set-cookie" not in headers
    # No waiting: the change was committed before the response was sent.
    assert console.sql("SELECT status FROM lists.subscribers WHERE email = 'hanako@example.net'") == [("unsubscribed",)]
    assert console.sql("SELECT reason FROM lists.suppressions WHERE email = 'hanako@example.net'") == [
        ("unsubscribed",)
    ]
    status, headers, _ = await one_click(port, client_tls_context, tokens["jiro@example.net"], multipart=True)
    assert status == 200 and "set-cookie" not in headers
    assert console.sql("SELECT status FROM lists.subscribers WHERE email = 'jiro@example.net'") == [("unsubscribed",)]

    forged = tokens["jiro@example.net"][:-3] + ("AAA" if not tokens["jiro@example.net"].endswith("AAA") else "BBB")
    status, _, body = await one_click(port, client_tls_context, forged)
    assert status == 404 and "jiro" not in body and "example.net" not in body
    status, _, _ = await asyncio.to_thread(
        raw_request, port, client_tls_context, "POST", f"/u/{tokens['jiro@example.net']}", b"",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert status == 400

    second = await send_campaign(web, list_id, "Second")

    async def second_done():
        data = (await web.get(f"/campaigns/{second}/progress.json")).get_json()
        return data if data["finished"] else None

    progress = await poll(second_done, timeout=60)
    assert (progress["total"], progress["sent"]) == (1, 1)
    after = console.catcher.received_by()
    assert [subject_of(m) for m in after["taro@example.net"]] == ["First", "Second"]
    assert len(after["hanako@example.net"]) == 1 and len(after["jiro@example.net"]) == 1


async def _all_received(console: Console, count: int):
    received = console.catcher.received_by()
    return received if len(received) >= count else None


async def test_unsubscribe_page_shows_lists_and_leaves_only_the_chosen_one(site, internal_key, client_tls_context):
    # The link opened in a browser shows the address and its lists (in Japanese for a Japanese browser)
    # and changes nothing; posting the choice needs the page's CSRF token, and leaves only the chosen
    # list: the subscriber stays active on the other one and is not suppressed.
    console, port = site
    web = await logged_in(console)
    news = await make_list(web, "ニュース", "email,name\nsato@example.net,佐藤\n")
    sale = await make_list(web, "セール", "email,name\nsato@example.net,佐藤\n")
    subscriber = console.sql("SELECT id FROM lists.subscribers WHERE email = 'sato@example.net'")[0][0]
    token = unsubscribe_token(internal_key, RecipientRef(console.organization_id, 7, subscriber))

    status, headers, body = await asyncio.to_thread(
        raw_request, port, client_tls_context, "GET", f"/u/{token}", None, {"Accept-Language": "ja"}
    )
    assert status == 200 and "sato@example.net" in body and "ニュース" in body and "セール" in body
    assert "配信停止" in body and headers["referrer-policy"] == "strict-origin"
    assert console.sql("SELECT count(*) FROM lists.list_subscriptions WHERE subscriber_id = %s", (subscriber,)) == [
        (2,)
    ]

    visitor = console.client()
    page = await visitor.get(f"/u/{token}")
    assert page.status_code == 200
    refused = await visitor.post(f"/u/{token}/choose", {"list_ids": str(sale)}, csrf=False)
    assert refused.status_code == 400
    token_field = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    chosen = await visitor.post(
        f"/u/{token}/choose", {"list_ids": str(sale), "action": "chosen", "csrf_token": token_field}
    )
    assert chosen.status_code == 200, chosen.get_data(as_text=True)
    remaining = console.sql("SELECT list_id FROM lists.list_subscriptions WHERE subscriber_id = %s", (subscriber,))
    assert remaining == [(news,)]
    assert console.sql("SELECT status FROM lists.subscribers WHERE id = %s", (subscriber,)) == [("active",)]
    assert console.sql("SELECT count(*) FROM lists.suppressions") == [(0,)]
    forged = await visitor.get(f"/u/{token[:-4]}AAAA")
    assert forged.status_code == 404


async def test_signup_with_double_opt_in_through_the_real_smtp_catcher(site, client_tls_context):
    # A hosted signup form (list, name, a custom field) is posted from another site with no cookie and no
    # CSRF token; the subscriber is pending and the sender delivers the confirmation mail to the SMTP
    # catcher. Opening its /c/ link changes nothing (mail scanners open links); pressing the button
    # (a POST) makes the subscriber active on the list. A filled honeypot gets the same thanks and
    # stores nothing; too many signups from one address get a clear "too many attempts" page.
    console, port = site
    web = await logged_in(console)
    list_id = await make_list(web, "Newsletter", "email,name\nexisting@example.net,Existing\n")
    await web.post("/fields", {"key": "pref", "label": "都道府県", "type": "text"})
    await web.post("/audience-settings", {"sender_address": "news@news.example.com", "sender_name": "Acme"})
    created = await web.post(
        "/forms",
        {
            "list_id": str(list_id),
            "name": "メルマガ登録",
            "ask_name": "1",
            "field_keys": "pref",
            "thanks_text": "ありがとう",
        },
    )
    assert created.status_code == 302
    form_id = int(created.location.rsplit("/", 1)[1])

    status, _, page = await asyncio.to_thread(raw_request, port, client_tls_context, "GET", f"/f/{form_id}")
    assert status == 200 and 'name="field.pref"' in page and 'name="website"' in page and "都道府県" in page

    def post_signup(fields: dict) -> tuple[int, dict[str, str], str]:
        return raw_request(
            port, client_tls_context, "POST", f"/f/{form_id}", urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://shop.example.com"},
        )  # fmt: skip

    status, _, body = await asyncio.to_thread(
        post_signup, {"email": "new@example.net", "name": "新規 太郎", "field.pref": "東京都", "website": ""}
    )
    assert status == 200 and "ありがとう" in body
    assert console.sql("SELECT status, attributes->>'pref' FROM lists.subscribers WHERE email = 'new@example.net'") == [
        ("pending", "東京都")
    ]
    caught = (await poll(lambda: _mail_for(console, "new@example.net")))[0]
    message = email.message_from_bytes(caught.data, policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",)).get_content()
    link = re.search(r"https?://\S+?(/c/[A-Za-z0-9_\-]+)", text)
    assert link, text
    path = link.group(1)

    status, _, body = await asyncio.to_thread(raw_request, port, client_tls_context, "GET", path)
    assert status == 200 and 'method="post"' in body
    assert console.sql("SELECT status FROM lists.subscribers WHERE email = 'new@example.net'") == [("pending",)]
    visitor = console.client()
    landing = await visitor.get(path)
    token_field = re.search(r'name="csrf_token" value="([^"]+)"', landing.get_data(as_text=True)).group(1)
    confirmed = await visitor.post(path, {"csrf_token": token_field})
    assert confirmed.status_code == 200 and "ありがとう" in confirmed.get_data(as_text=True)
    assert console.sql(
        "SELECT s.status FROM lists.subscribers s JOIN lists.list_subscriptions ls ON ls.subscriber_id = s.id"
        " WHERE s.email = 'new@example.net' AND ls.list_id = %s",
        (list_id,),
    ) == [("active",)]

    status, _, body = await asyncio.to_thread(post_signup, {"email": "robot@example.net", "website": "http://spam"})
    assert status == 200 and "ありがとう" in body
    assert console.sql("SELECT count(*) FROM lists.subscribers WHERE email = 'robot@example.net'") == [(0,)]

    statuses = []
    for i in range(15):
        status, _, body = await asyncio.to_thread(post_signup, {"email": f"flood{i}@example.net"})
        statuses.append(status)
        if status == 429:
            break
    assert statuses[-1] == 429 and "Too many attempts" in body
    assert 200 in statuses


async def _mail_for(console: Console, address: str):
    return console.catcher.received_by().get(address)
