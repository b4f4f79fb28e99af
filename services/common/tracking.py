"""Open and click tracking: signed tokens naming campaign, recipient and link, and the HTML rewrite that uses them.

The sender rewrites a campaign's links and adds the pixel when it builds each recipient's copy; the gateway
checks the token of every request to its public tracking endpoints. A token carries the link itself, signed,
so the gateway redirects without asking any service and nothing can be turned into an open redirect: a
changed byte, a truncated token or a token signed with another key is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from html import unescape
from urllib.parse import urlsplit

from markupsafe import escape

OPEN = "o"
CLICK = "c"
# version, organisation, campaign, subscriber, link number (0 for an open)
_HEADER = struct.Struct(">BQQQH")
_VERSION = 1
_MAC_BYTES = 16
MAX_URL = 4000
# A link opts out with this attribute (which is taken out of the mail): <a href="..." data-mb-notrack>.
OPT_OUT_ATTRIBUTE = "data-mb-notrack"

_A_TAG = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*=\s*)("([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_OPT_OUT = re.compile(r"\s" + OPT_OUT_ATTRIBUTE + r"""(\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class TrackedEvent:
    """What a verified token says: an open, or a click on link `link` (numbered from 1) to `url`."""

    kind: str
    organization_id: int
    campaign_id: int
    subscriber_id: int
    link: int = 0
    url: str = ""


def _mac(key: bytes, kind: str, body: bytes) -> bytes:
    return hmac.new(key, b"track:" + kind.encode() + b":" + body, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(key: bytes, event: TrackedEvent) -> str:
    """The URL-safe token of an open or a click (the click's URL inside, signed)."""
    body = _HEADER.pack(_VERSION, event.organization_id, event.campaign_id, event.subscriber_id, event.link)
    body += event.url.encode()
    return _b64(body + _mac(key, event.kind, body))


def read_token(key: bytes, kind: str, token: str) -> TrackedEvent | None:
    """The event a token names, or None for anything not made by make_token with this key and kind."""
    if len(token) > 2 * MAX_URL or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None
    if len(raw) < _HEADER.size + _MAC_BYTES:
        return None
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, kind, body)):
        return None
    version, organization_id, campaign_id, subscriber_id, link = _HEADER.unpack_from(body)
    if version != _VERSION:
        return None
    try:
        url = body[_HEADER.size :].decode()
    except UnicodeDecodeError:
        return None
    if kind == CLICK and not is_trackable(url):
        return None
    return TrackedEvent(kind, organization_id, campaign_id, subscriber_id, link, url)


def is_trackable(url: str) -> bool:
    """Only plain http(s) links to a host are rewritten (never mailto:, tel:, anchors or javascript:)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc) and len(url) <= MAX_URL


def rewrite_html(
    html: str,
    click_url: Callable[[int, str], str],
    open_url: str,
    untracked_prefixes: tuple[str, ...] = (),
) -> str:
    """The HTML with each trackable link through `click_url(link number, url)` and the pixel `open_url` added.

    Links to `untracked_prefixes` (the unsubscribe page), non-http links and links marked with
    data-mb-notrack stay as they are (the marker is removed). Links are numbered in order of appearance.
    """
    counter = 0

    def one_tag(match: re.Match[str]) -> str:
        nonlocal counter
        tag = match.group(0)
        if _OPT_OUT.search(tag):
            return _OPT_OUT.sub("", tag)
        href = _HREF.search(tag)
        if href is None:
            return tag
        url = unescape(next(g for g in href.groups()[2:] if g is not None)).strip()
        if not is_trackable(url) or any(url.startswith(prefix) for prefix in untracked_prefixes if prefix):
            return tag
        counter += 1
        rewritten = f'{href.group(1)}"{escape(click_url(counter, url))}"'
        return tag[: href.start()] + rewritten + tag[href.end() :]

    out = _A_TAG.sub(one_tag, html)
    pixel = f'<img src="{escape(open_url)}" width="1" height="1" alt="" style="display:none">'
    ends = list(_BODY_END.finditer(out))
    if not ends:
        return out + pixel
    last = ends[-1].start()
    return out[:last] + pixel + out[last:]


# Requests no person made, by their User-Agent: mail privacy proxies that fetch every image at delivery
# (Apple Mail Privacy Protection sends a bare "Mozilla/5.0"), and link scanners of mail security gateways.
# Gmail's and Yahoo's image proxies fetch when the person opens the mail: those are people's opens.
_MACHINE_AGENTS = re.compile(
    r"bot|crawler|spider|scanner|barracuda|mimecast|proofpoint|safelinks|symantec|trendmicro|fortinet|"
    r"python-|curl/|wget/|go-http-client|java/|okhttp",
    re.IGNORECASE,
)


def is_machine(user_agent: str) -> bool:
    """Whether a tracking request came from a machine (privacy prefetch, link scanner), not a person."""
    agent = user_agent.strip()
    return agent in ("", "Mozilla/5.0") or bool(_MACHINE_AGENTS.search(agent))
