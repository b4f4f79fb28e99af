"""The console's audience pages through Flask's test client, against real auth, lists, campaigns and sender."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest_asyncio

from tests.support.console import OWNER, PASSWORD, Console, Web, create_list, start_console
from tests.support.poll import poll


@pytest_asyncio.fixture
async def console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path: Path):
    """The console on real services."""
    started = await start_console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path / "outbox")
    yield started
    await started.stop()


def text(response) -> str:
    """The response body as text."""
    return response.get_data(as_text=True)


async def logged_in(console: Console, login: str = OWNER) -> Web:
    """A client logged in as this user."""
    web = console.client()
    assert (await web.login(login, PASSWORD)).status_code == 302
    return web


async def add_plan_field(web: Web) -> None:
    """A single-choice field "plan" (free, pro)."""
    response = await web.post("/fields", {"key": "plan", "label": "プラン", "type": "choice", "options": "free\npro\n"})
    assert response.status_code == 302


async def import_sjis(web: Web, list_id: int, csv_text: str, mapping: dict[str, str]) -> dict:
    """Upload a Shift_JIS CSV with the encoding override, map its columns, wait for the job; its progress."""
    page = await web.post(
        f"/lists/{list_id}/import",
        {"file": (io.BytesIO(csv_text.encode("cp932")), "顧客.csv"), "encoding": "shift_jis", "mode": "add_and_update"},
        content_type="multipart/form-data",
    )
    assert page.status_code == 200, text(page)
    job_id = int(re.search(r"/imports/([0-9]+)/start", text(page)).group(1))
    started = await web.post(f"/lists/{list_id}/imports/{job_id}/start", {f"column_{k}": v for k, v in mapping.items()})
    assert started.status_code == 302 and started.location.endswith(f"/imports/{job_id}")

    async def finished():
        data = (await web.get(f"/lists/{list_id}/imports/{job_id}.json")).get_json()
        return data if data["finished"] else None

    return {"id": job_id, "page": text(page), **(await poll(finished))}


async def test_fields_import_with_shift_jis_override_mapping_and_export(console):
    # An admin defines a choice field; an editor may not. A Japanese Excel file (Shift_JIS) with headers
    # no one could guess is uploaded with the encoding override: the mapping page shows its decoded
    # columns; mapped to email, name and the field, the job imports the good rows (Japanese names
    # intact), reports the bad one in the error CSV with its row number, the progress bar reaches 100%,
    # and the list exports as Shift_JIS CSV that decodes back to the same names.
    console.add_user("eddie", "editor")
    admin = await logged_in(console)
    editor = await logged_in(console, "eddie")
    assert (await editor.post("/fields", {"key": "nope", "type": "text"})).status_code == 403
    await add_plan_field(admin)
    fields_page = text(await admin.get("/fields"))
    assert 'data-key="plan"' in fields_page and "free, pro" in fields_page
    list_id = await create_list(editor, "顧客")
    source = "連絡先,お客様名,契約\nhanako@example.jp,山田 花子,pro\n"
    source += "taro@example.jp,鈴木 太郎,free\nnot-an-address,誰か,pro\n"
    job = await import_sjis(editor, list_id, source, {"1": "email", "2": "name", "3": "plan"})
    assert "連絡先" in job["page"] and "お客様名" in job["page"] and "Shift_JIS" in job["page"]
    assert (job["state"], job["rows_added"], job["rows_failed"], job["percent"]) == ("done", 2, 1, 100)
    detail = text(await editor.get(f"/lists/{list_id}/imports/{job['id']}"))
    assert '<progress max="100" value="100"' in detail
    errors = await editor.get(f"/lists/{list_id}/imports/{job['id']}/errors.csv")
    rows = list(csv.reader(io.StringIO(errors.get_data().decode("utf-8-sig"))))
    assert rows[0] == ["row", "reason", "raw"] and rows[1][0] == "4" and "not-an-address" in rows[1][2]
    listing = text(await editor.get(f"/lists/{list_id}"))
    assert "山田 花子" in listing and "鈴木 太郎" in listing

    exported = await editor.get(f"/lists/{list_id}/export.csv?encoding=shift_jis")
    assert exported.status_code == 200 and "attachment" in exported.headers["Content-Disposition"]
    decoded = list(csv.reader(io.StringIO(exported.get_data().decode("shift_jis"))))
    assert decoded[0][:3] == ["email", "name", "status"] and "plan" in decoded[0]
    assert {(r[0], r[1]) for r in decoded[1:]} == {("hanako@example.jp", "山田 花子"), ("taro@example.jp", "鈴木 太郎")}
    assert (await editor.get(f"/lists/{list_id}/export.csv?encoding=latin-1")).status_code == 400


async def test_segment_builder_adds_rows_previews_saves_and_targets_a_campaign(console):
    # The condition builder is a server-rendered form: "add a condition" re-renders it with one more
    # row; preview shows the count and sample rows of (plan is pro AND address contains "example")
    # OR (name starts with 鈴木); a value meant as SQL is only a value. Saved, the segment is offered on
    # the campaign compose page and a campaign can be saved targeting it; the segment exports as CSV.
    admin = await logged_in(console)
    await add_plan_field(admin)
    list_id = await create_list(admin, "all")
    await import_sjis(
        admin, list_id,
        "a,b,c\nhanako@example.jp,山田 花子,pro\ntaro@example.jp,鈴木 太郎,free\njiro@example.jp,佐藤 次郎,free\n",
        {"1": "email", "2": "name", "3": "plan"},
    )  # fmt: skip
    base = {"groups": "2", "match": "any", "g0_match": "all", "g0_rows": "1", "g1_match": "all", "g1_rows": "1"}
    base |= {"g0_r0_field": "custom:plan", "g0_r0_op": "eq", "g0_r0_value": "pro"}
    base |= {"g1_r0_field": "name", "g1_r0_op": "starts_with", "g1_r0_value": "鈴木"}
    added = await admin.post("/segments/build", {**base, "action": "add_row:0"})
    assert added.status_code == 200 and 'name="g0_r1_field"' in text(added)
    form = {**base, "g0_rows": "2", "g0_r1_field": "email", "g0_r1_op": "contains", "g0_r1_value": "example"}
    preview = await admin.post("/segments/build", {**form, "action": "preview"})
    page = text(preview)
    assert 'data-count="2"' in page and "hanako@example.jp" in page and "taro@example.jp" in page
    assert "jiro@example.jp" not in page.split('id="segment-sample"')[1]
    smuggled = await admin.post(
        "/segments/build", {**form, "g1_r0_value": "x' OR '1'='1", "action": "preview", "g0_r0_value": "none"}
    )
    assert 'data-count="0"' in text(smuggled)
    bad = await admin.post("/segments/build", {**form, "g0_r0_op": "gt", "action": "preview"})
    assert bad.status_code == 400 and 'id="segment-error"' in text(bad)

    saved = await admin.post("/segments/build", {**form, "name": "pro or 鈴木", "action": "save"})
    assert saved.status_code == 302
    segment_id = int(saved.location.rsplit("/", 1)[1])
    reopened = text(await admin.get(saved.location))
    assert 'value="pro"' in reopened and 'data-count="2"' in reopened
    compose = text(await admin.get("/campaigns/new"))
    assert f'name="segment_ids" value="{segment_id}"' in compose
    campaign = await admin.post(
        "/campaigns/new",
        {
            "name": "seg", "segment_ids": str(segment_id), "from_address": "news@news.example.com",
            "subject": "Hi", "text_body": "Hi {{ name }}",
        },
    )  # fmt: skip
    assert campaign.status_code == 302, text(campaign)
    campaign_id = int(campaign.location.rsplit("/", 1)[1])
    assert console.sql("SELECT segment_ids FROM campaigns.campaigns WHERE id = %s", (campaign_id,)) == [([segment_id],)]
    exported = await admin.get(f"/segments/{segment_id}/export.csv")
    rows = list(csv.reader(io.StringIO(exported.get_data().decode("utf-8-sig"))))
    assert sorted(r[0] for r in rows[1:]) == ["hanako@example.jp", "taro@example.jp"]


async def test_suppression_add_search_export_and_admin_only_removal(console):
    # An editor adds addresses by hand, one per line (a bad line is reported with its line number); the
    # list is searchable and exports as CSV; only an admin may take an address off again (an editor gets
    # 403 and the address stays).
    console.add_user("eddie", "editor")
    editor = await logged_in(console, "eddie")
    admin = await logged_in(console)
    added = await editor.post("/suppression", {"emails": "stop@example.jp\nnot an address\nquit@example.jp\n"})
    assert added.status_code == 302
    page = text(await editor.get("/suppression"))
    assert "2 address(es) added" in page and "Line 2:" in page
    assert "stop@example.jp" in page and "quit@example.jp" in page
    assert "/suppression/remove" not in page
    found = text(await editor.get("/suppression?q=quit"))
    assert "quit@example.jp" in found and "stop@example.jp" not in found
    exported = await editor.get("/suppression.csv")
    assert "stop@example.jp,manual,console" in exported.get_data().decode("utf-8-sig")
    refused = await editor.post("/suppression/remove", {"email": "stop@example.jp"})
    assert refused.status_code == 403
    assert console.sql("SELECT count(*) FROM lists.suppressions") == [(2,)]
    removed = await admin.post("/suppression/remove", {"email": "stop@example.jp"})
    assert removed.status_code == 302
    assert console.sql("SELECT email FROM lists.suppressions") == [("quit@example.jp",)]


async def test_subscriber_search_detail_edit_personal_data_and_erase(console):
    # Search filters by name and field value; the detail page shows the status history; an editor edits
    # the name and status (recorded with the reason) but may not download personal data or erase; the
    # admin downloads the JSON, and erases only after typing the address, leaving no row but a hash.
    console.add_user("eddie", "editor")
    admin = await logged_in(console)
    editor = await logged_in(console, "eddie")
    await add_plan_field(admin)
    list_id = await create_list(admin, "all")
    await import_sjis(
        admin, list_id, "m,n,p\nhanako@example.jp,山田 花子,pro\ntaro@example.jp,鈴木 太郎,free\n",
        {"1": "email", "2": "name", "3": "plan"},
    )  # fmt: skip
    found = text(await editor.get("/subscribers?field_key=plan&field_value=pro"))
    assert "hanako@example.jp" in found and "taro@example.jp" not in found
    found = text(await editor.get("/subscribers?name=太郎"))
    assert "taro@example.jp" in found and "hanako@example.jp" not in found
    target = console.sql("SELECT id FROM lists.subscribers WHERE email = 'hanako@example.jp'")[0][0]
    edited = await editor.post(
        f"/subscribers/{target}",
        {"name": "山田 華子", "field.plan": "free", "status": "unsubscribed", "reason": "電話で依頼"},
    )
    assert edited.status_code == 302
    detail = text(await editor.get(f"/subscribers/{target}"))
    assert "山田 華子" in detail and "電話で依頼" in detail and "unsubscribed" in detail
    assert console.sql("SELECT attributes->>'plan' FROM lists.subscribers WHERE id = %s", (target,)) == [("free",)]
    assert (await editor.get(f"/subscribers/{target}/personal-data.json")).status_code == 403
    assert (
        await editor.post(f"/subscribers/{target}/erase", {"confirm_email": "hanako@example.jp"})
    ).status_code == 403

    data = await admin.get(f"/subscribers/{target}/personal-data.json")
    assert data.status_code == 200 and "attachment" in data.headers["Content-Disposition"]
    assert json.loads(data.get_data())["subscriber"]["email"] == "hanako@example.jp"
    wrong = await admin.post(f"/subscribers/{target}/erase", {"confirm_email": "someone@example.jp"})
    assert wrong.status_code == 302
    assert console.sql("SELECT count(*) FROM lists.subscribers WHERE id = %s", (target,)) == [(1,)]
    erased = await admin.post(f"/subscribers/{target}/erase", {"confirm_email": "hanako@example.jp"})
    assert erased.status_code == 302
    assert console.sql("SELECT count(*) FROM lists.subscribers WHERE email = 'hanako@example.jp'") == [(0,)]
    assert console.sql("SELECT reason, email FROM lists.suppressions") == [("erased", None)]


async def test_forms_settings_and_snippet_escaped(console):
    # An editor makes a signup form; its page shows the hosted /f/ address and the embeddable snippet as
    # escaped text in a <pre>; only an admin changes the "confirmation mail on unsubscribe" setting.
    console.add_user("eddie", "editor")
    editor = await logged_in(console, "eddie")
    admin = await logged_in(console)
    list_id = await create_list(editor, "<b>news</b>")
    assert (await admin.post("/audience-settings", {"sender_address": "news@example.jp"})).status_code == 302
    created = await editor.post("/forms", {"list_id": str(list_id), "name": "top", "thanks_text": "ありがとう"})
    assert created.status_code == 302
    form_id = int(created.location.rsplit("/", 1)[1])
    page = text(await editor.get(created.location))
    assert f"https://localhost/f/{form_id}" in page
    snippet = re.search(r'<pre class="snippet" id="form-snippet">(.*?)</pre>', page, re.S).group(1)
    assert "&lt;form" in snippet and "<form" not in snippet and f"/f/{form_id}" in snippet
    assert (await editor.post("/audience-settings", {"confirm_unsubscribe": "1"})).status_code == 403
    saved = await admin.post("/audience-settings", {"confirm_unsubscribe": "1", "sender_address": "news@example.jp"})
    assert saved.status_code == 302
    assert 'id="confirm-unsubscribe" checked' in text(await admin.get("/audience-settings"))


async def test_forms_say_they_need_a_sender_address_in_both_languages(console):
    # With no sender address for list mail, the forms page says a form needs one (in Japanese for a
    # Japanese browser, with a link for an admin), creating a form is refused with the reason in the
    # user's language and nothing is made; an admin cannot empty the address once a form exists. A form
    # left without a sender tells the person signing up that it is closed, never "thank you".
    console.add_user("eddie", "editor")
    editor = await logged_in(console, "eddie")
    admin = await logged_in(console)
    list_id = await create_list(admin, "News")
    english = text(await editor.get("/forms"))
    assert "it needs a sender address" in english and 'id="set-sender"' not in english
    assert "Ask an administrator" in english
    japanese = text(await admin.get("/forms", headers={"Accept-Language": "ja"}))
    assert "差出人アドレスが必要です" in japanese and 'id="set-sender"' in japanese
    refused = await admin.post("/forms", {"list_id": str(list_id), "name": "top"}, headers={"Accept-Language": "ja"})
    assert refused.status_code == 302
    page = text(await admin.get("/forms", headers={"Accept-Language": "ja"}))
    assert "登録フォームには確認メールの差出人アドレスが必要です" in page
    assert console.sql("SELECT count(*) FROM lists.signup_forms") == [(0,)]

    assert (await admin.post("/audience-settings", {"sender_address": "news@example.jp"})).status_code == 302
    assert "it needs a sender address" not in text(await editor.get("/forms"))
    created = await editor.post("/forms", {"list_id": str(list_id), "name": "top"})
    assert created.status_code == 302 and "/forms/" in created.location
    await admin.post("/audience-settings", {"sender_address": ""})
    assert "it cannot be empty while the organisation has forms" in text(await admin.get("/audience-settings"))
    assert console.sql("SELECT sender_address FROM lists.organization_settings") == [("news@example.jp",)]

    console.sql("UPDATE lists.organization_settings SET sender_address = ''")
    form_id = int(created.location.rsplit("/", 1)[1])
    closed = await console.client().post(f"/f/{form_id}", {"email": "new@example.jp"}, csrf=False, from_page=False)
    assert closed.status_code == 503 and "cannot take signups" in text(closed)
    assert "Thank" not in text(closed)
    assert console.sql("SELECT count(*) FROM lists.subscribers") == [(0,)]


async def test_another_organisations_audience_is_404_and_unchanged(console):
    # An admin of another organisation typing this organisation's ids gets 404 for its subscribers,
    # segments, forms, imports and exports, cannot edit or erase a subscriber, remove a suppression or
    # start an import, and sees none of it in listings.
    admin = await logged_in(console)
    await add_plan_field(admin)
    list_id = await create_list(admin, "Acme only")
    job = await import_sjis(admin, list_id, "a,b\nhanako@example.jp,山田 花子\n", {"1": "email", "2": "name"})
    subscriber = console.sql("SELECT id FROM lists.subscribers")[0][0]
    saved = await admin.post(
        "/segments/build",
        {"groups": "1", "g0_rows": "1", "g0_r0_field": "email", "g0_r0_op": "contains", "g0_r0_value": "@",
         "name": "all", "action": "save"},
    )  # fmt: skip
    segment_id = int(saved.location.rsplit("/", 1)[1])
    await admin.post("/audience-settings", {"sender_address": "news@example.jp"})
    form_id = int((await admin.post("/forms", {"list_id": str(list_id), "name": "f"})).location.rsplit("/", 1)[1])
    await admin.post("/suppression", {"emails": "stop@example.jp"})
    other = console.add_organization("Other KK")
    console.add_user("mallory", "admin", organization_id=other)
    intruder = await logged_in(console, "mallory")
    for path in (
        f"/subscribers/{subscriber}",
        f"/subscribers/{subscriber}/personal-data.json",
        f"/segments/{segment_id}",
        f"/segments/{segment_id}/export.csv",
        f"/forms/{form_id}",
        f"/lists/{list_id}/export.csv",
        f"/lists/{list_id}/import",
        f"/lists/{list_id}/imports/{job['id']}/errors.csv",
    ):
        assert (await intruder.get(path)).status_code == 404, path
    for path, form in (
        (f"/subscribers/{subscriber}", {"name": "pwned"}),
        (f"/subscribers/{subscriber}/erase", {"confirm_email": "hanako@example.jp"}),
        (f"/segments/{segment_id}/delete", {}),
        (f"/lists/{list_id}/imports/{job['id']}/rollback", {}),
        (f"/lists/{list_id}/imports/{job['id']}/start", {}),
    ):
        assert (await intruder.post(path, form)).status_code == 404, path
    await intruder.post("/suppression/remove", {"email": "stop@example.jp"})
    assert console.sql("SELECT name FROM lists.subscribers") == [("山田 花子",)]
    assert console.sql("SELECT count(*) FROM lists.segments") == [(1,)]
    assert console.sql("SELECT count(*) FROM lists.suppressions") == [(1,)]
    for path in ("/subscribers", "/segments", "/forms", "/suppression", "/fields"):
        listing = text(await intruder.get(path))
        assert "hanako" not in listing and "stop@example.jp" not in listing and 'data-key="plan"' not in listing


async def test_csrf_required_on_console_posts_but_not_on_the_two_public_ones(console):
    # Every new console POST without this session's token is refused (400) and changes nothing; the
    # one-click unsubscribe and the public signup POST are deliberately exempt and reach lists (here:
    # an unknown token and form answer 404, not a CSRF refusal).
    admin = await logged_in(console)
    list_id = await create_list(admin, "csrf")
    for path, form in (
        ("/fields", {"key": "forged", "type": "text"}),
        ("/suppression", {"emails": "forged@example.jp"}),
        ("/suppression/remove", {"email": "x@example.jp"}),
        ("/segments/build", {"action": "add_group"}),
        ("/forms", {"list_id": str(list_id), "name": "forged"}),
        ("/audience-settings", {"confirm_unsubscribe": "1"}),
        (f"/lists/{list_id}/imports/1/rollback", {}),
        ("/subscribers/1/erase", {"confirm_email": "x@example.jp"}),
        ("/u/1.2.3.AAAAAAAAAAAAAAAAAAAAAA/choose", {"action": "all"}),
        ("/c/some-token", {}),
    ):
        response = await admin.post(path, form, csrf=False)
        assert response.status_code == 400 and "CSRF" in text(response), path
    assert console.sql("SELECT count(*) FROM lists.custom_fields") == [(0,)]
    assert console.sql("SELECT count(*) FROM lists.suppressions") == [(0,)]
    anonymous = console.client()
    one_click = await anonymous.post(
        "/u/1.2.3.AAAAAAAAAAAAAAAAAAAAAA", {"List-Unsubscribe": "One-Click"}, csrf=False, from_page=False
    )
    assert one_click.status_code == 404 and "CSRF" not in text(one_click)
    signup = await anonymous.post("/f/999", {"email": "a@example.jp"}, csrf=False)
    assert signup.status_code == 404 and "CSRF" not in text(signup)


async def test_service_refusals_read_in_the_users_language(console):
    # The lists service explains a refusal in English (for the API and CLI); the console shows the same
    # explanation in the user's language, values filled in, also when it is a reason behind a prefix
    # ("field 'plan': " + "'gold' is not one of free, pro"). English users keep the service's own words.
    admin = await logged_in(console)
    await add_plan_field(admin)
    list_id = await create_list(admin, "all")
    source = "m,n,p\nhanako@example.jp,山田 花子,pro\n"
    await import_sjis(admin, list_id, source, {"1": "email", "2": "name", "3": "plan"})
    target = console.sql("SELECT id FROM lists.subscribers WHERE email = 'hanako@example.jp'")[0][0]

    async def refusals(path: str, form: dict) -> str:
        page = await admin.post(path, form, follow_redirects=True)
        return " ".join(re.findall(r'class="flash error"[^>]*>([^<]*)<', text(page)))

    duplicate = await refusals("/fields", {"key": "plan", "type": "text"})
    assert "a field &#39;plan&#39; exists already" in duplicate, duplicate
    wrong_choice = await refusals(f"/subscribers/{target}", {"name": "山田 花子", "field.plan": "gold"})
    assert "field &#39;plan&#39;: &#39;gold&#39; is not one of free, pro" in wrong_choice

    await admin.post("/language", {"language": "ja"})
    duplicate = await refusals("/fields", {"key": "plan", "type": "text"})
    assert "項目 &#39;plan&#39; はすでにあります" in duplicate, duplicate
    wrong_choice = await refusals(f"/subscribers/{target}", {"name": "山田 花子", "field.plan": "gold"})
    assert "項目 &#39;plan&#39;: &#39;gold&#39; は free, pro のいずれでもありません" in wrong_choice, wrong_choice
    assert console.sql("SELECT attributes->>'plan' FROM lists.subscribers WHERE id = %s", (target,)) == [("pro",)]

    # The rejected-rows CSV of an import, downloaded in Japanese, explains each row in Japanese.
    source = "m,n,p\ntaro@example.jp,鈴木 太郎,gold\njiro@example.jp,鈴木 次郎\nsaburo@example.jp,鈴木 三郎,free\n"
    job = await import_sjis(admin, list_id, source, {"1": "email", "2": "name", "3": "plan"})
    assert (job["rows_added"], job["rows_failed"]) == (1, 2)
    download = await admin.get(f"/lists/{list_id}/imports/{job['id']}/errors.csv")
    rows = list(csv.reader(io.StringIO(download.get_data().decode("utf-8-sig"))))
    assert rows == [
        ["行番号", "理由", "元の行"],
        ["2", "項目 'plan': 'gold' は free, pro のいずれでもありません", "taro@example.jp,鈴木 太郎,gold"],
        ["3", "列数が 3 のはずが 2 です", "jiro@example.jp,鈴木 次郎"],
    ]


async def test_audience_actions_appear_on_the_audit_page_and_csv_in_japanese(console):
    # An admin who reads the console in Japanese defines a field, changes the list settings, imports a
    # file, exports the list and the suppression list, downloads a subscriber's personal data and erases
    # them: the audit page lists each action under its Japanese label (with its code) and the admin's
    # login, and the CSV has the same lines with their labels; no line names the erased address.
    admin = await logged_in(console)
    await admin.post("/language", {"language": "ja"})
    await add_plan_field(admin)
    settings = {"confirm_unsubscribe": "1", "sender_address": "news@example.jp"}
    assert (await admin.post("/audience-settings", settings)).status_code == 302
    list_id = await create_list(admin, "all")
    await import_sjis(admin, list_id, "m,n\nhanako@example.jp,山田 花子\n", {"1": "email", "2": "name"})
    assert (await admin.get(f"/lists/{list_id}/export.csv")).status_code == 200
    assert (await admin.get("/suppression.csv")).status_code == 200
    target = console.sql("SELECT id FROM lists.subscribers WHERE email = 'hanako@example.jp'")[0][0]
    assert (await admin.get(f"/subscribers/{target}/personal-data.json")).status_code == 200
    erased = await admin.post(f"/subscribers/{target}/erase", {"confirm_email": "hanako@example.jp"})
    assert erased.status_code == 302
    labels = {
        "field.created": "カスタム項目の作成",
        "lists.settings_changed": "リスト設定の変更",
        "import.started": "インポートの開始",
        "import.finished": "インポートの終了",
        "list.exported": "読者の書き出し",
        "suppression.exported": "配信停止リストの書き出し",
        "subscriber.data_exported": "個人データの書き出し",
        "subscriber.erased": "読者の完全消去",
    }

    async def every_action_listed():
        page = text(await admin.get("/audit"))
        return page if all(code in page for code in labels) else None

    page = await poll(every_action_listed)
    for code, label in labels.items():
        assert f"{label} <code>{code}</code>" in page, code
    assert f"subscriber:{target}" in page and "hanako@example.jp" not in page and OWNER in page
    exported = (await admin.get("/audit.csv")).get_data().decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(exported)))
    by_action = {row["action"]: row for row in rows}
    for code, label in labels.items():
        assert by_action[code]["action_label"] == label
        assert (by_action[code]["service"], by_action[code]["source_ip"]) == ("lists", "127.0.0.1")
    assert json.loads(by_action["subscriber.erased"]["detail"])["via"] == "gateway"
    assert "hanako@example.jp" not in exported
