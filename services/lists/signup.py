"""Consent in and out, apart from storage and transport: the opt-in limits, the mails' text, the form's HTML."""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.lists.fields import FieldDef


@dataclass(frozen=True)
class ConfirmationLimits:
    """How often one address may be sent a double opt-in confirmation, as of `now`."""

    now: datetime
    # One mail per address and form within this window; a repeat signup within it sends nothing.
    window: timedelta
    # At most this many per address and organisation in any 24 hours, whichever form asked.
    daily_cap: int


@dataclass(frozen=True)
class Letter:
    """A mail's text, Japanese first, then English; `{{confirm_url}}` is filled in by the sender."""

    subject: str
    text_body: str
    html_body: str = ""


CONFIRMATION = Letter(
    subject="登録の確認 / Please confirm your subscription",
    text_body="以下のリンクから登録を確定してください。\nPlease confirm your subscription:\n{{confirm_url}}\n",
    html_body="<p>以下のリンクから登録を確定してください。<br>Please confirm your subscription:</p>"
    '<p><a href="{{confirm_url}}">{{confirm_url}}</a></p>',
)
UNSUBSCRIBED = Letter(
    subject="配信停止を承りました / You have been unsubscribed",
    text_body="配信停止の手続きが完了しました。\nYou will no longer receive these emails.\n",
)
UNSUBSCRIBE_SOURCES = ("one-click", "page")


def hash_token(token: str) -> str:
    """What is stored of a confirmation link's token (the link itself is only in the mail)."""
    return hashlib.sha256(token.encode()).hexdigest()


def confirmation_key(form_id: int, subscriber_id: int, token: str) -> str:
    """The confirmation mail's idempotency key."""
    return f"lists.confirm.{form_id}.{subscriber_id}.{hash_token(token)[:16]}"


def unsubscribed_key(organization_id: int, subscriber_id: int, campaign_id: int) -> str:
    """The unsubscribe confirmation mail's idempotency key: one per subscriber and campaign."""
    return f"lists.unsubscribed.{organization_id}.{subscriber_id}.{campaign_id}"


def form_snippet(action: str, ask_name: bool, field_keys: Sequence[str], defs: Mapping[str, FieldDef]) -> str:
    """Embeddable HTML of a signup form posting to `action`, with the honeypot robots fill in."""
    target = html.escape(action, quote=True)
    parts = [f'<form method="post" action="{target}" accept-charset="UTF-8" class="mailblast-signup">']
    parts.append('<label>Email <input type="email" name="email" required></label>')
    if ask_name:
        parts.append('<label>Name <input type="text" name="name"></label>')
    for key in field_keys:
        d = defs.get(key)
        if d is None:
            continue
        label = html.escape(d.label)
        name = html.escape(f"field.{d.key}", quote=True)
        if d.type == "choice":
            options = "".join(
                f'<option value="{html.escape(o, quote=True)}">{html.escape(o)}</option>' for o in d.options
            )
            parts.append(f'<label>{label} <select name="{name}"><option value=""></option>{options}</select></label>')
        else:
            kind = {"number": "number", "date": "date"}.get(d.type, "text")
            parts.append(f'<label>{label} <input type="{kind}" name="{name}"></label>')
    # People never see or fill this; robots that fill every field give themselves away.
    parts.append(
        '<div style="position:absolute;left:-5000px" aria-hidden="true">'
        '<input type="text" name="website" tabindex="-1" autocomplete="off"></div>'
    )
    parts.append('<button type="submit">Subscribe</button></form>')
    return "\n".join(parts)
