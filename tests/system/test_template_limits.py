"""Over-limit campaign templates are refused in the console (save, preview, test send, send), on real services."""

from __future__ import annotations

import html
import re
import tracemalloc
from pathlib import Path

import pytest_asyncio

from tests.support.console import OWNER, PASSWORD, Web, create_campaign, create_list, start_console

NESTED = "<p>{% for i in range(100000) %}{% for j in range(100000) %}{{ name }}{% endfor %}{% endfor %}</p>"
HUGE = "{% set a = 'x' * 100000000 %}<p>{{ a }}</p>"
LOOPS_EN = "html_body: the template runs more than 10000 loop iterations (macro calls included)"
LOOPS_JA = "html_body: テンプレートのループの繰り返しが上限の 10000 回を超えています（マクロの呼び出しを含む）"
VALUE_EN = "html_body: the template builds a value of more than 1000000 characters or items"
VALUE_JA = "html_body: テンプレートが上限の 1000000 文字（または要素）を超える値を作ろうとしています"


@pytest_asyncio.fixture
async def console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path: Path):
    """The console on real services."""
    started = await start_console(database_url, nats_server, internal_key, tls_files, dkim_keys, tmp_path / "outbox")
    yield started
    await started.stop()


def text(response) -> str:
    """The response body as text, entities decoded."""
    return html.unescape(response.get_data(as_text=True))


def flashes(response) -> str:
    """The error flashes of a page."""
    return " ".join(re.findall(r'class="flash error"[^>]*>([^<]*)<', text(response)))


async def compose(web: Web, list_id: int, body: str):
    """Post the compose form with this HTML body."""
    return await web.post(
        "/campaigns/new",
        {
            "name": "重い", "list_ids": str(list_id), "from_name": "Acme", "from_address": "news@news.example.com",
            "subject": "Hello {{ name }}", "html_body": body, "text_body": "",
        },
    )  # fmt: skip


async def test_nested_loops_and_a_huge_value_are_refused_when_saved_in_both_languages(console):
    # Nested range loops and 'x' * 100000000 in a campaign body are refused when the campaign is
    # composed, and when a draft is edited to carry them, with a message naming the limit, in English and
    # in Japanese; nothing is stored, the refusal costs no more than a few megabytes, and an ordinary
    # body is still accepted.
    web = console.client()
    assert (await web.login(OWNER, PASSWORD)).status_code == 302
    list_id = await create_list(web, "会員")
    tracemalloc.start()
    try:
        refused = await compose(web, list_id, HUGE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.status_code == 400 and VALUE_EN in text(refused)
    assert peak < 50_000_000, peak
    refused = await compose(web, list_id, NESTED)
    assert refused.status_code == 400 and LOOPS_EN in text(refused)
    assert console.sql("SELECT count(*) FROM campaigns.campaigns") == [(0,)]

    await web.post("/language", {"language": "ja"})
    assert VALUE_JA in text(await compose(web, list_id, HUGE))
    assert LOOPS_JA in text(await compose(web, list_id, NESTED))
    campaign_id = await create_campaign(web, list_id, html_body="<p>{% for i in range(3) %}{{ name }}{% endfor %}</p>")
    edited = await web.post(
        f"/campaigns/{campaign_id}/edit",
        {"name": "x", "list_ids": str(list_id), "from_address": "news@news.example.com", "subject": "s",
         "html_body": NESTED},
    )  # fmt: skip
    assert edited.status_code == 400 and LOOPS_JA in text(edited)
    assert console.sql("SELECT html_body FROM campaigns.campaigns") == [
        ("<p>{% for i in range(3) %}{{ name }}{% endfor %}</p>",)
    ]


async def test_a_campaign_stored_before_the_limits_is_refused_at_preview_test_send_and_send(console):
    # A draft saved before the limits existed carries the nested loops (written straight into the
    # table, as an old row would be). Its preview shows the limit instead of rendering, a test send and
    # the send are refused with the same message, no mail leaves and the campaign stays a draft.
    web = console.client()
    assert (await web.login(OWNER, PASSWORD)).status_code == 302
    list_id = await create_list(web, "会員")
    campaign_id = await create_campaign(web, list_id)
    console.sql("UPDATE campaigns.campaigns SET html_body = %s WHERE id = %s", (HUGE, campaign_id))
    preview = await web.get(f"/campaigns/{campaign_id}/preview")
    assert preview.status_code == 200 and "the template builds a value of more than 1000000" in text(preview)
    console.sql("UPDATE campaigns.campaigns SET html_body = %s WHERE id = %s", (NESTED, campaign_id))

    await web.post("/language", {"language": "ja"})
    preview = await web.get(f"/campaigns/{campaign_id}/preview")
    assert "テンプレートのループの繰り返しが上限の 10000 回を超えています" in text(preview)
    tested = await web.post(f"/campaigns/{campaign_id}/test", {"to_address": "me@example.org"}, follow_redirects=True)
    assert f"キャンペーン {campaign_id} は送信できません: {LOOPS_JA}" in flashes(tested)
    sent = await web.post(f"/campaigns/{campaign_id}/send", follow_redirects=True)
    assert f"キャンペーン {campaign_id} は送信できません: {LOOPS_JA}" in flashes(sent)
    assert console.sql("SELECT state FROM campaigns.campaigns WHERE id = %s", (campaign_id,)) == [("draft",)]
    assert console.catcher.received_by() == {}
