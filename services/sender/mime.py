"""One recipient's message as MIME bytes (text + HTML alternatives, UTF-8), refusing header injection.

The layout is written directly rather than through email.message.EmailMessage: that costs about 5 ms
per message (header registry, folding policy, content manager), over ten times the whole budget of a
delivery. The email package still encodes the From display name (formataddr); subjects get RFC 2047
encoded words here, and the tests parse every message back with the email package.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import re
import time
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate

# Any control character (CR and LF above all) in a header value could start a header of its own.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
# A plain address: no spaces, quotes, angle brackets or controls; a dotted domain of letters, digits, '-'.
_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


class CrlfMessage(bytes):
    """Message bytes as composed here (build_message, then DKIM): CRLF line ends only, so the SMTP client
    skips checking them again (three passes over every message)."""

    __slots__ = ()


class MessageProblem(ValueError):
    """The message cannot be built safely; the text names the field and what is wrong."""


def check_header_text(field: str, value: str) -> None:
    """Refuse a header value carrying CR, LF or another control character (it could inject a header)."""
    if _CONTROL.search(value):
        raise MessageProblem(f"the {field} contains a line break or control character; refusing to send")


def check_address(field: str, value: str) -> None:
    """Refuse something that is not a plain email address."""
    check_header_text(field, value)
    if not _ADDRESS.match(value) or ".." in value or value.startswith(".") or ".@" in value:
        raise MessageProblem(f"the {field} {value!r} is not a valid email address")


@dataclass(frozen=True)
class Sender:
    """Who a campaign is from; checked once per batch."""

    from_name: str
    from_address: str
    reply_to: str = ""
    _from_header: str = field(default="", init=False, repr=False, compare=False)

    def check(self) -> None:
        """Refuse injected or malformed From/Reply-To values."""
        check_header_text("From name", self.from_name)
        check_address("From address", self.from_address)
        if self.reply_to:
            check_address("Reply-To address", self.reply_to)

    @property
    def from_header(self) -> str:
        """The From value, display name RFC 2047-encoded when it is not ASCII (computed once)."""
        if not self._from_header:
            object.__setattr__(self, "_from_header", formataddr((self.from_name, self.from_address), charset="utf-8"))
        return self._from_header


class _DateCache:
    """RFC 5322 dates change once a second; format each second once."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            # "+0000" says UTC; formatdate's "-0000" would mean "zone unknown".
            self._second, self._text = second, formatdate(second).replace("-0000", "+0000")
        return self._text


_DATES = _DateCache()

# Boundaries need only be unique and absent from the parts: a per-process random prefix and a counter
# (os.urandom per message costs more than the rest of the layout).
_BOUNDARY_PREFIX = "=_mb_" + os.urandom(8).hex() + "_"
_BOUNDARY_COUNTER = itertools.count()

# An encoded word may be 75 characters: "=?utf-8?b?" + base64 + "?=" leaves 63, i.e. 45 bytes of text.
_WORD_BYTES = 45
# Longer plain-ASCII header values are encoded too, so no line passes the folding limit.
_PLAIN_HEADER_LIMIT = 900


def encode_header_text(value: str) -> str:
    """The value as-is when it is short ASCII, else RFC 2047 UTF-8 encoded words folded onto lines."""
    if value.isascii() and len(value) <= _PLAIN_HEADER_LIMIT:
        return value
    words: list[str] = []
    chunk = bytearray()
    for char in value:
        encoded = char.encode()
        # Never split a character between words: each word must decode on its own.
        if len(chunk) + len(encoded) > _WORD_BYTES:
            words.append("=?utf-8?b?" + base64.b64encode(chunk).decode() + "?=")
            chunk = bytearray()
        chunk += encoded
    if chunk:
        words.append("=?utf-8?b?" + base64.b64encode(chunk).decode() + "?=")
    return "\r\n ".join(words)


def _display_name(name: str) -> str:
    if not name:
        return ""
    if not name.isascii():
        # One encoded word, as formataddr writes it, without its charset machinery (which costs more
        # than the rest of the To line); mail readers join split words in a display name with spaces.
        return "=?utf-8?b?" + base64.b64encode(name.encode()).decode() + "?="
    return formataddr((name, "x@x"))[: -len(" <x@x>")]


def _body_part(content_type: str, text: str) -> bytes:
    """A UTF-8 body part: 7bit when plain short-lined ASCII, quoted-printable for long ASCII, else base64."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    if not normalised.endswith("\n"):
        normalised += "\n"
    if normalised.isascii():
        if max(map(len, normalised.split("\n"))) <= 998:
            encoding, payload = "7bit", normalised.replace("\n", "\r\n").encode()
        else:
            qp = binascii.b2a_qp(normalised.encode(), istext=True)
            encoding, payload = "quoted-printable", qp.replace(b"\n", b"\r\n")
    else:
        # One b2a_base64 call and slicing: base64.encodebytes calls it once per 57 bytes.
        encoded = binascii.b2a_base64(normalised.encode(), newline=False)
        lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
        encoding, payload = "base64", b"\r\n".join(lines) + b"\r\n"
    head = f"Content-Type: {content_type}; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
    return head.encode() + payload


def build_message(
    *,
    sender: Sender,
    to_address: str,
    to_name: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    unsubscribe_url: str,
) -> bytes:
    """Return the message bytes (CRLF line ends); raises MessageProblem for unsafe personal values.

    An empty `unsubscribe_url` leaves out the List-Unsubscribe headers (account mail such as a reset link).
    """
    check_address("recipient address", to_address)
    check_header_text("subject (after personal fields)", subject)
    check_header_text("recipient name", to_name)
    check_header_text("unsubscribe link", unsubscribe_url)
    name = _display_name(to_name)
    headers = [
        f"From: {sender.from_header}",
        f"To: {name} <{to_address}>" if name else f"To: {to_address}",
    ]
    if sender.reply_to:
        headers.append(f"Reply-To: {sender.reply_to}")
    headers += [
        f"Subject: {encode_header_text(subject)}",
        f"Date: {_DATES.now()}",
        f"Message-ID: {message_id}",
    ]
    if unsubscribe_url:
        headers += [
            f"List-Unsubscribe: <{unsubscribe_url}>",
            # RFC 8058: the receiver may unsubscribe with one POST, without a person opening the page.
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        ]
    headers.append("MIME-Version: 1.0")
    if text and html:
        # "=_" never occurs in base64 or quoted-printable output; 7bit parts are checked.
        boundary = f"{_BOUNDARY_PREFIX}{next(_BOUNDARY_COUNTER)}"
        text_part = _body_part("text/plain", text)
        html_part = _body_part("text/html", html)
        while boundary.encode() in text_part or boundary.encode() in html_part:
            boundary = f"{_BOUNDARY_PREFIX}{next(_BOUNDARY_COUNTER)}"
        headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        delimiter = f"\r\n--{boundary}\r\n".encode()
        return b"".join(
            (
                "\r\n".join(headers).encode(),
                b"\r\n\r\nThis is a multi-part message in MIME format.\r\n",
                delimiter,
                text_part,
                delimiter,
                html_part,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
    part = _body_part("text/html", html) if html else _body_part("text/plain", text)
    return "\r\n".join(headers).encode() + b"\r\n" + part
