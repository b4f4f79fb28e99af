"""Tracking tokens and the HTML rewrite: signed, tamper-evident, and never touching what must stay as it is."""

from __future__ import annotations

import re

import pytest

from services.common import tracking
from services.common.tracking import CLICK, OPEN, TrackedEvent

KEY = b"k" * 32
CLICKED = TrackedEvent(CLICK, 7, 42, 1001, 2, "https://shop.example.com/sale?x=1&y=2")


def test_a_token_names_campaign_recipient_and_link_and_only_this_key_reads_it() -> None:
    # A click token read back gives the same organisation, campaign, subscriber, link and URL; read as an
    # open, with another key, changed in any one character, truncated or padded, it is nothing.
    token = tracking.make_token(KEY, CLICKED)
    assert tracking.read_token(KEY, CLICK, token) == CLICKED
    assert tracking.read_token(KEY, OPEN, token) is None
    assert tracking.read_token(b"x" * 32, CLICK, token) is None
    for i in range(0, len(token), 7):
        changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        assert tracking.read_token(KEY, CLICK, changed) is None
    for bad in (token[:-1], token[:10], "", token + "A", token + "=", "../" + token, "x" * 9000):
        assert tracking.read_token(KEY, CLICK, bad) is None


@pytest.mark.parametrize("url", ["javascript:alert(1)", "mailto:a@example.com", "//evil.example", "ftp://x.example/"])
def test_a_signed_token_for_a_url_that_is_no_web_link_is_refused(url: str) -> None:
    # Even a correctly signed click token redirects only to an http(s) URL with a host.
    token = tracking.make_token(KEY, TrackedEvent(CLICK, 1, 1, 1, 1, url))
    assert tracking.read_token(KEY, CLICK, token) is None


def test_links_are_rewritten_but_unsubscribe_mailto_tel_and_opted_out_links_stay() -> None:
    # Two web links become numbered click URLs (the &amp; of the HTML read as &); the unsubscribe link,
    # mailto:, tel:, an anchor and a link marked data-mb-notrack stay (the marker removed); the pixel goes
    # in before </body>.
    html = (
        '<html><body><p><a href="https://shop.example.com/sale?x=1&amp;y=2" class="b">Sale</a>'
        " <a href='http://example.org/a'>A</a> <a href=\"https://mail.example.com/u/TOKEN\">Unsubscribe</a>"
        ' <a href="mailto:info@example.com">Mail</a> <a href="tel:+81312345678">Call</a> <a href="#top">Top</a>'
        ' <a data-mb-notrack href="https://private.example.com/">Private</a></p></body></html>'
    )
    seen = []

    def click_url(link: int, url: str) -> str:
        seen.append((link, url))
        return f"https://t.example/c/{link}?u=1&v=2"

    out = tracking.rewrite_html(html, click_url, "https://t.example/o/P", ("https://mail.example.com/u/",))
    assert seen == [(1, "https://shop.example.com/sale?x=1&y=2"), (2, "http://example.org/a")]
    assert '<a href="https://t.example/c/1?u=1&amp;v=2" class="b">' in out
    assert '<a href="https://t.example/c/2?u=1&amp;v=2">' in out
    for kept in ('href="https://mail.example.com/u/TOKEN"', 'href="mailto:info@example.com"', 'href="tel:+81312345678"',
                 'href="#top"', '<a href="https://private.example.com/">'):  # fmt: skip
        assert kept in out
    assert "data-mb-notrack" not in out
    assert re.search(r'<img src="https://t.example/o/P"[^>]*></body></html>$', out)


def test_machine_requests_are_told_from_people_by_their_user_agent() -> None:
    # Apple Mail Privacy Protection's bare agent and link scanners are machines; browsers and Gmail's image
    # proxy (which fetches when the person opens the mail) are people.
    for agent in ("", "Mozilla/5.0", "Barracuda Sentinel (EE)", "python-requests/2.31", "Mimecast Link Scanner"):
        assert tracking.is_machine(agent), agent
    for agent in (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    ):
        assert not tracking.is_machine(agent), agent
