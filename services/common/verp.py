"""Signed per-recipient addresses: the VERP return path and the Message-ID name campaign and recipient.

The sender writes them; the bounce service reads them back from returned mail, and the development
outbox reads whose mail it is. The signature stops a forged bounce from error-stopping somebody else's
subscriber, and a message from outside from passing as an organisation's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

_RETURN_PATH = re.compile(r"^b-(\d+)-(\d+)-(\d+)-([a-z2-7]{10})@", re.IGNORECASE)
_MESSAGE_ID = re.compile(r"<?mb\.(\d+)\.(\d+)\.(\d+)\.([a-z2-7]{10})@[^>]+>?", re.IGNORECASE)
_TRANSACTIONAL_ID = re.compile(r"^<tx\.(\d{1,19})\.([a-z2-7]{16})\.([a-z2-7]{16})@[^>]+>$")


@dataclass(frozen=True)
class RecipientRef:
    """Which organisation, campaign and subscriber a message was for."""

    organization_id: int
    campaign_id: int
    subscriber_id: int


def _signature(key: bytes, ref: RecipientRef) -> str:
    text = f"{ref.organization_id}.{ref.campaign_id}.{ref.subscriber_id}".encode()
    digest = hmac.new(key, b"verp:" + text, hashlib.sha256).digest()
    return base64.b32encode(digest)[:10].decode().lower()


def return_path(key: bytes, ref: RecipientRef, domain: str) -> str:
    """The envelope sender for one recipient's copy, e.g. b-1-42-1007-abcdefghij@bounces.example.com."""
    sig = _signature(key, ref)
    return f"b-{ref.organization_id}-{ref.campaign_id}-{ref.subscriber_id}-{sig}@{domain}"


def message_id(key: bytes, ref: RecipientRef, domain: str) -> str:
    """A Message-ID stable per campaign and recipient, so a resent copy folds into the first."""
    sig = _signature(key, ref)
    return f"<mb.{ref.organization_id}.{ref.campaign_id}.{ref.subscriber_id}.{sig}@{domain}>"


def _checked(key: bytes, match: re.Match[str] | None) -> RecipientRef | None:
    if match is None:
        return None
    ref = RecipientRef(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    return ref if hmac.compare_digest(_signature(key, ref), match.group(4).lower()) else None


def parse_return_path(key: bytes, address: str) -> RecipientRef | None:
    """The recipient a VERP address stands for, or None when it is not one of ours or is forged."""
    return _checked(key, _RETURN_PATH.match(address.strip().strip("<>")))


def parse_message_id(key: bytes, value: str) -> RecipientRef | None:
    """The recipient a Message-ID stands for, or None when it is not one of ours or is forged."""
    return _checked(key, _MESSAGE_ID.search(value or ""))


def _b32_mac(key: bytes, text: str, length: int) -> str:
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:length]


def transactional_message_id(key: bytes, organization_id: int, message_key: str, domain: str) -> str:
    """A transactional message's Message-ID: stable per message key, naming its organisation, signed.

    The key appears only as a keyed hash (it may hold a token's hash); the signature over organisation
    and hash lets anyone with the internal key tell whose message it is.
    """
    ref = _b32_mac(key, f"transactional-key:{organization_id}.{message_key}", 16)
    # "tx." rather than "mb.": the bounce service must not read it as a campaign recipient.
    return f"<tx.{organization_id}.{ref}.{_b32_mac(key, f'transactional:{organization_id}.{ref}', 16)}@{domain}>"


def message_organization(key: bytes, value: str) -> int | None:
    """The organisation a Message-ID we signed (campaign or transactional) names, or None (not ours, forged)."""
    campaign = parse_message_id(key, value)
    if campaign is not None:
        return campaign.organization_id
    match = _TRANSACTIONAL_ID.match((value or "").strip())
    if match is None:
        return None
    organization_id, ref, signature = int(match.group(1)), match.group(2), match.group(3)
    expected = _b32_mac(key, f"transactional:{organization_id}.{ref}", 16)
    return organization_id if hmac.compare_digest(expected, signature) else None


def _unsubscribe_mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, b"unsubscribe:" + body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def unsubscribe_token(key: bytes, ref: RecipientRef) -> str:
    """A URL-safe signed token naming one recipient of one campaign, for the List-Unsubscribe link."""
    body = f"{ref.organization_id}.{ref.campaign_id}.{ref.subscriber_id}"
    return f"{body}.{_unsubscribe_mac(key, body)}"


_UNSUBSCRIBE_TOKEN = re.compile(r"^(\d{1,19})\.(\d{1,19})\.(\d{1,19})\.([A-Za-z0-9_-]{22})$")


def parse_unsubscribe_token(key: bytes, token: str) -> RecipientRef | None:
    """The recipient an unsubscribe token stands for, or None when it is malformed or forged."""
    match = _UNSUBSCRIBE_TOKEN.match((token or "").strip())
    if match is None:
        return None
    body = ".".join(match.group(1, 2, 3))
    if not hmac.compare_digest(_unsubscribe_mac(key, body), match.group(4)):
        return None
    return RecipientRef(int(match.group(1)), int(match.group(2)), int(match.group(3)))
