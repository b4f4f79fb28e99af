"""Editing drafts, pausing/resuming/cancelling campaigns and the sessions page, on real services."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import io
import re
from zoneinfo import ZoneInfo

import grpc
from mailblast.v1 import campaigns_pb2, campaigns_pb2_grpc

from cli import main as cli
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from tests.support.clock import MovableClock
from tests.support.console import (
    OWNER,
    PASSWORD,
    Console,
    Web,
    create_campaign,
    create_list,
)
from tests.support.mtls import default_pki
from tests.support.poll import poll


def text(response) -> str:
    """The response body as text."""
    return response.get_data(as_text=True)


async def logged_in(console: Console, login: str = OWNER, user_agent: str = "test-browser") -> Web:
    """A client logged in as this user, with its own User-Agent."""
    web = console.client()
    web.client.environ_base["HTTP_USER_AGENT"] = user_agent
    response = await web.login(login, PASSWORD)
    assert response.status_code == 302, text(response)
    return web


async def _list_with(web: Web, name: str, csv_text: str) -> int:
    list_id = await create_list(web, name)
    upload = await web.post(
        f"/lists/{list_id}/upload",
        {"file": (io.BytesIO(csv_text.encode()), "people.csv")},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 302, text(upload)

    async def imported():
        data = (await web.get(upload.location + ".json")).get_json()
        return data if data["finished"] else None

    assert (await poll(imported))["state"] == "done"
    return list_id


def _stub(console: Console, internal_key: bytes, organization_id: int):
    """A campaigns stub calling as a user of this organisation with read and send scopes, relayed by the console."""
    channel = console.channel(console.campaigns.grpc_port, "gateway")
    principal = Principal(organization_id, user_id=1, scopes=("read", "send"), role="editor", service="gateway")
    metadata = ((IDENTITY_HEADER, IdentitySigner(internal_key).sign(principal, "campaigns")),)
    return campaigns_pb2_grpc.CampaignsServiceStub(channel), metadata


async def test_edit_a_draft_in_console_and_cli_then_send_carries_new_subject(make_console, monkeypatch, capsys):
    # An editor opens the Edit page of a draft (the form prefilled), saves a new subject; the CLI then
    # changes only the subject again, keeping the HTML; the send delivers a mail with the CLI's subject
    # and the kept body. Once sending, the edit is refused and the Edit page goes back to the campaign.
    console = await make_console()
    web = await logged_in(console)
    list_id = await _list_with(web, "Customers", "email,name\nhanako@example.net,Hanako\n")
    campaign_id = await create_campaign(web, list_id)
    assert f"/campaigns/{campaign_id}/edit" in text(await web.get(f"/campaigns/{campaign_id}"))
    form_page = text(await web.get(f"/campaigns/{campaign_id}/edit"))
    assert 'value="Hello {{ name }}"' in form_page and f'value="{list_id}" checked' in form_page
    assert f'action="/campaigns/{campaign_id}/edit"' in form_page
    saved = await web.post(
        f"/campaigns/{campaign_id}/edit",
        {"name": "Spring sale", "list_ids": str(list_id), "from_address": "news@news.example.com",
         "subject": "Edited {{ name }}", "html_body": "<p>Edited body {{ name }}</p>", "text_body": "Edited"},
    )  # fmt: skip
    assert saved.status_code == 302, text(saved)
    assert "The draft was saved." in text(await web.get(saved.location))
    assert "<dt>Subject</dt><dd>Edited {{ name }}</dd>" in text(await web.get(f"/campaigns/{campaign_id}"))

    monkeypatch.setenv("MAILBLAST_CAMPAIGNS_ADDR", f"127.0.0.1:{console.campaigns.grpc_port}")
    monkeypatch.setenv("MAILBLAST_LISTS_ADDR", f"127.0.0.1:{console.lists.grpc_port}")
    for name, value in default_pki().env("cli").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAILBLAST_TOKEN", console.api_token)
    code = await asyncio.to_thread(cli.run, ["campaigns", "update", str(campaign_id), "--subject", "CLI {{ name }}様"])
    capsys.readouterr()
    assert code == 0

    assert (await web.post(f"/campaigns/{campaign_id}/send")).status_code == 302
    mail = (await poll(lambda: _mail_to(console, "hanako@example.net")))[0]
    delivered = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert delivered["Subject"] == "CLI Hanako様"
    assert "Edited body Hanako" in delivered.get_body(("html",)).get_content()

    refused = await web.post(
        f"/campaigns/{campaign_id}/edit",
        {"name": "Late", "list_ids": str(list_id), "from_address": "news@news.example.com", "subject": "Late"},
    )
    assert refused.status_code == 400 and "only a draft can be changed" in text(refused)
    back = await web.get(f"/campaigns/{campaign_id}/edit")
    assert back.status_code == 302 and back.location == f"/campaigns/{campaign_id}"


async def _mail_to(console: Console, address: str) -> list:
    return console.catcher.received_by().get(address, [])


async def test_update_refused_unless_draft_and_other_organisation_is_not_found(make_console, internal_key):
    # Over gRPC: UpdateCampaign changes a draft, is FAILED_PRECONDITION once the campaign is sending and
    # NOT_FOUND for a caller of another organisation (whose console route answers 404); nothing changes.
    console = await make_console()
    web = await logged_in(console)
    console.catcher.reply = lambda address, seen: "450 4.2.0 try later"  # keep the campaign sending
    list_id = await _list_with(web, "Customers", "email,name\nhanako@example.net,Hanako\n")
    campaign_id = await create_campaign(web, list_id)
    stub, metadata = _stub(console, internal_key, console.organization_id)
    fields = {
        "name": "Renamed",
        "list_ids": [list_id],
        "from_address": "news@news.example.com",
        "subject": "New",
        "text_body": "Hi",
    }
    updated = await stub.UpdateCampaign(
        campaigns_pb2.UpdateCampaignRequest(campaign_id=campaign_id, **fields), metadata=metadata
    )
    assert (
        updated.name == "Renamed" and updated.subject == "New" and updated.state == campaigns_pb2.CAMPAIGN_STATE_DRAFT
    )

    other = console.add_organization("Other KK")
    console.add_user("mallory", "admin", organization_id=other)
    foreign_stub, foreign_metadata = _stub(console, internal_key, other)
    try:
        await foreign_stub.UpdateCampaign(
            campaigns_pb2.UpdateCampaignRequest(campaign_id=campaign_id, **fields),
            metadata=foreign_metadata,
        )
        raise AssertionError("another organisation updated the campaign")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
    intruder = await logged_in(console, "mallory")
    assert (await intruder.get(f"/campaigns/{campaign_id}/edit")).status_code == 404
    posted = await intruder.post(f"/campaigns/{campaign_id}/edit", {**fields, "list_ids": str(list_id)})
    assert posted.status_code == 404
    # The console tells a missing campaign from a missing list by the refusal's template, not its words.
    await intruder.post("/language", {"language": "ja"})
    posted = await intruder.post(f"/campaigns/{campaign_id}/edit", {**fields, "list_ids": str(list_id)})
    assert posted.status_code == 404

    await stub.SendCampaign(campaigns_pb2.SendCampaignRequest(campaign_id=campaign_id), metadata=metadata)
    try:
        await stub.UpdateCampaign(
            campaigns_pb2.UpdateCampaignRequest(campaign_id=campaign_id, **{**fields, "subject": "Too late"}),
            metadata=metadata,
        )
        raise AssertionError("a sending campaign was updated")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    got = await stub.GetCampaign(campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id), metadata=metadata)
    assert got.subject == "New"


async def test_pause_resume_cancel_buttons_change_the_state(make_console):
    # With the receiving server deferring every recipient the campaign stays sending: the page offers
    # Pause (not Resume); pausing, resuming and cancelling each change the state with a message; a viewer
    # sees no buttons and is refused with 403; a cancelled campaign offers none.
    console = await make_console()
    console.catcher.reply = lambda address, seen: "450 4.2.0 try later"
    console.add_user("vic", "viewer")
    web = await logged_in(console)
    viewer = await logged_in(console, "vic")
    list_id = await _list_with(web, "Customers", "email,name\nhanako@example.net,Hanako\n")
    campaign_id = await create_campaign(web, list_id)
    page = f"/campaigns/{campaign_id}"

    async def state() -> str:
        return (await web.get(f"{page}/progress.json")).get_json()["state"]

    assert 'id="cancel-campaign"' in text(await web.get(page))
    assert (await web.post(f"{page}/send")).status_code == 302
    assert await state() == "sending"
    body = text(await web.get(page))
    assert 'id="pause-campaign"' in body and 'id="resume-campaign"' not in body
    assert 'id="pause-campaign"' not in text(await viewer.get(page))
    assert (await viewer.post(f"{page}/pause")).status_code == 403

    paused = await web.post(f"{page}/pause")
    assert paused.status_code == 302 and paused.location == page
    body = text(await web.get(page))
    assert "The campaign is paused." in body and 'id="resume-campaign"' in body
    assert await state() == "paused"
    assert (await viewer.post(f"{page}/resume")).status_code == 403
    again = await web.post(f"{page}/pause")
    assert "Refused" in text(await web.get(again.location))

    assert (await web.post(f"{page}/resume")).status_code == 302
    assert "Sending has resumed." in text(await web.get(page))
    assert await state() == "sending"
    assert (await viewer.post(f"{page}/cancel")).status_code == 403
    await web.post("/language", {"language": "ja", "next": page})
    assert "一時停止" in text(await web.get(page))
    assert (await web.post(f"{page}/cancel")).status_code == 302
    body = text(await web.get(page))
    assert "キャンペーンを中止しました。" in body
    assert not re.search(r'id="(pause|resume|cancel)-campaign"', body)
    assert await state() == "cancelled"


async def test_sessions_page_lists_sessions_and_revoking_one_logs_that_client_out(make_console):
    # Logging in twice gives two sessions; the sessions page lists both with IP and user agent, marks the
    # current one and offers Revoke only for the other; revoking it sends that client to the login page.
    console = await make_console()
    laptop = await logged_in(console, user_agent="LaptopBrowser/1.0")
    phone = await logged_in(console, user_agent="PhoneBrowser/2.0")
    page = text(await laptop.get("/account/sessions"))
    rows = re.findall(r'<tr id="session-(\d+)"( class="current")?>(.*?)</tr>', page, re.S)
    assert len(rows) == 2, page
    current = [r for r in rows if r[1]]
    others = [r for r in rows if not r[1]]
    assert len(current) == 1 and "LaptopBrowser/1.0" in current[0][2] and "This session" in current[0][2]
    assert "PhoneBrowser/2.0" in others[0][2] and "127.0.0.1" in others[0][2]
    assert "/revoke" in others[0][2] and "/revoke" not in current[0][2]
    assert "/account/sessions" in text(await laptop.get("/account"))
    assert (await phone.get("/campaigns")).status_code == 200

    revoked = await laptop.post(f"/account/sessions/{others[0][0]}/revoke")
    assert revoked.status_code == 302 and revoked.location == "/account/sessions"
    after = text(await laptop.get("/account/sessions"))
    assert "The session was ended." in after and "PhoneBrowser/2.0" not in after
    gone = await phone.get("/campaigns")
    assert gone.status_code == 302 and gone.location.startswith("/login")
    assert (await laptop.get("/campaigns")).status_code == 200
    missing = await laptop.post(f"/account/sessions/{others[0][0]}/revoke", csrf=False)
    assert missing.status_code == 400


async def test_a_campaign_scheduled_in_the_console_starts_at_its_time(make_console):
    # An editor schedules a draft for an hour from now, Tokyo time: the page shows it scheduled with that
    # date and time. A date that is no date, a time that has passed and an unknown time zone are each
    # refused with the reason and change nothing. Withdrawn, it is a draft again; scheduled again, it
    # starts when the clock reaches its time and is delivered. A person may read the times in their own zone.
    clock = MovableClock()
    console = await make_console(clock=clock)
    console.add_user("eddie", "editor")
    web = await logged_in(console, "eddie")
    list_id = await create_list(web, "予約リスト")
    upload = await web.post(
        f"/lists/{list_id}/upload",
        {"file": (io.BytesIO("email,name\nhanako@example.net,花子\n".encode()), "one.csv")},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 302
    await poll(lambda: _finished(web, upload.location + ".json"))
    campaign_id = await create_campaign(web, list_id)
    tokyo = ZoneInfo("Asia/Tokyo")
    when = (clock.now() + dt.timedelta(hours=1)).astimezone(tokyo).replace(second=0, microsecond=0)
    page_path = f"/campaigns/{campaign_id}"

    for form, reason in (
        ({"send_at": "tomorrow", "time_zone": "Asia/Tokyo"}, "tomorrow is not a date and time"),
        ({"send_at": "2020-01-01T09:00", "time_zone": "Asia/Tokyo"}, "has passed"),
        ({"send_at": when.strftime("%Y-%m-%dT%H:%M"), "time_zone": "Mars/Olympus"}, "Unknown time zone Mars/Olympus"),
    ):
        await web.get(page_path)
        refused = await web.post(f"{page_path}/schedule", form)
        assert refused.status_code == 302
        assert reason in text(await web.get(page_path))
    assert 'data-state="draft"' in text(await web.get(page_path))

    await web.post(f"{page_path}/schedule", {"send_at": when.strftime("%Y-%m-%dT%H:%M"), "time_zone": "Asia/Tokyo"})
    page = text(await web.get(page_path))
    assert 'data-state="scheduled"' in page and ">Scheduled<" in page
    assert f'{when:%Y-%m-%d %H:%M} <span class="muted">(Asia/Tokyo)</span>' in page
    # Someone who reads times in Berlin sees the schedule in both zones; a zone that is none is refused.
    await web.get("/account")
    await web.post("/account/time-zone", {"time_zone": "Nowhere/Atlantis"})
    assert "Unknown time zone Nowhere/Atlantis" in text(await web.get("/account"))
    await web.post("/account/time-zone", {"time_zone": "Europe/Berlin"})
    berlin = when.astimezone(ZoneInfo("Europe/Berlin"))
    assert f'{berlin:%Y-%m-%d %H:%M} <span class="muted">(Europe/Berlin)</span>' in text(await web.get(page_path))
    await web.post(f"{page_path}/unschedule")
    assert 'data-state="draft"' in text(await web.get(page_path))
    await web.post(f"{page_path}/schedule", {"send_at": when.strftime("%Y-%m-%dT%H:%M"), "time_zone": "Asia/Tokyo"})

    clock.advance(hours=1, minutes=1)
    await console.campaigns.scheduler.run_once()
    # An hour idle ended the session (auth goes by the same clock): the editor logs in again to watch.
    web = await logged_in(console, "eddie")

    async def sent():
        data = (await web.get(f"{page_path}/progress.json")).get_json()
        return data if data["state"] == "sent" and data["sent"] == 1 else None

    await poll(sent, timeout=60)
    assert [m.rcpt_tos for m in console.catcher.messages] == [["hanako@example.net"]]


async def _finished(web: Web, url: str):
    data = (await web.get(url)).get_json()
    return data if data["finished"] else None


async def test_with_tracking_off_for_the_campaign_or_the_organisation_no_mail_carries_a_tracked_url(make_console):
    # A campaign saved without measurement, and a measured one while the organisation has measurement
    # switched off, are delivered with their links as written and no pixel; once the organisation measures
    # again, a measured campaign's link goes through /t/c/ and its pixel through /t/o/. Made-up tokens
    # on those endpoints are a 404.
    console = await make_console()
    web = await logged_in(console)
    list_id = await create_list(web, "Privacy")
    upload = await web.post(
        f"/lists/{list_id}/upload",
        {"file": (io.BytesIO(b"email,name\ntaro@example.net,Taro\n"), "one.csv")},
        content_type="multipart/form-data",
    )
    await poll(lambda: _finished(web, upload.location + ".json"))
    link = "https://shop.example.com/sale"

    async def sent_html(**fields) -> str:
        campaign_id = await create_campaign(web, list_id, html_body=f'<p><a href="{link}">Sale</a></p>', **fields)
        before = len(console.catcher.messages)
        await web.get(f"/campaigns/{campaign_id}")
        assert (await web.post(f"/campaigns/{campaign_id}/send")).status_code == 302
        caught = (await console.catcher.wait_for(before + 1))[before]
        message = email.message_from_bytes(caught.data, policy=email.policy.default)
        return message.get_body(("html",)).get_content()

    untracked = await sent_html()
    assert f'href="{link}"' in untracked and "/t/" not in untracked

    await web.get("/campaigns")
    assert (await web.post("/campaigns/tracking", {})).status_code == 302
    assert 'id="tracking-enabled" >' in text(await web.get("/campaigns")).replace("  ", " ")
    switched_off = await sent_html(tracking="on")
    assert f'href="{link}"' in switched_off and "/t/" not in switched_off

    await web.get("/campaigns")
    await web.post("/campaigns/tracking", {"tracking_enabled": "on"})
    tracked = await sent_html(tracking="on")
    assert f'href="{link}"' not in tracked and "/t/c/" in tracked and "/t/o/" in tracked
    for path in ("/t/c/AAAA", "/t/o/not-a-token", "/t/c/" + "A" * 60):
        assert (await web.get(path)).status_code == 404
