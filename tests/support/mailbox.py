"""A person's mailbox, read from the SMTP catcher's stored messages: wait for mail to an address, take its links."""

from __future__ import annotations

import asyncio
import json
import re
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

_URL = re.compile(r"https://[^\s<>\"']+")


def stored_mail(folder: Path, address: str) -> list[EmailMessage]:
    """Messages the catcher stored for this recipient, oldest first."""
    found = []
    for meta_path in sorted(folder.glob("*.json")):
        eml = meta_path.with_suffix(".eml")
        if not eml.exists() or address not in json.loads(meta_path.read_text()).get("rcpt_tos", []):
            continue
        found.append(BytesParser(policy=policy.default).parsebytes(eml.read_bytes()))
    return found


async def wait_for_mail(folder: Path, address: str, count: int = 1, timeout: float = 60.0) -> list[EmailMessage]:
    """The recipient's stored messages once there are at least `count` (polled with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        found = stored_mail(folder, address)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{address} got {len(found)} of {count} messages within {timeout:.0f}s")
        await asyncio.sleep(0.1)


def links(message: EmailMessage) -> list[str]:
    """The https links a person can click: in the text part, then the List-Unsubscribe header's."""
    body = message.get_body(preferencelist=("plain", "html"))
    found = _URL.findall(body.get_content() if body is not None else "")
    found += _URL.findall(str(message.get("List-Unsubscribe", "")))
    return found


def link_to(message: EmailMessage, path_prefix: str) -> str:
    """The message's one link whose path starts with `path_prefix` (e.g. "/reset/"), failing clearly otherwise."""
    matching = sorted({url for url in links(message) if re.match(rf"https://[^/]+{re.escape(path_prefix)}", url)})
    assert len(matching) == 1, f"expected one {path_prefix} link in {message['Subject']!r}, found {matching}"
    return matching[0]
