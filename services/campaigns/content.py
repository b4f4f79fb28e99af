"""What a campaign says, checked before it is stored: addresses, header-safe text, template syntax and limits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email
from jinja2 import Template, TemplateSyntaxError

from services.common import templating
from services.common.errors import InvalidArgument
from services.common.templating import BoundedEnvironment, TemplateLimitExceeded

# Characters that could end a header line or confuse a mail client: C0 controls, DEL, and the Unicode
# line and paragraph separators.
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


@dataclass(frozen=True)
class CampaignDraft:
    """The fields a user gives when creating a campaign."""

    name: str
    list_ids: tuple[int, ...]
    from_name: str
    from_address: str
    reply_to: str
    subject: str
    html_body: str
    text_body: str
    segment_ids: tuple[int, ...] = ()
    tracking: bool = False


def _header_text(field: str, value: str, max_len: int, required: bool) -> str:
    value = value.strip()
    if required and not value:
        raise InvalidArgument("%(field)s is required", field=field)
    if _HEADER_UNSAFE.search(value):
        raise InvalidArgument("%(field)s must not contain line breaks or control characters", field=field)
    if len(value) > max_len:
        raise InvalidArgument("%(field)s is longer than %(limit)s characters", field=field, limit=max_len)
    return value


def _address(field: str, value: str, required: bool) -> str:
    value = _header_text(field, value, 254, required)
    if not value:
        return ""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidArgument(
            "%(field)s %(address)r is not an email address: %(reason)s", field=field, address=value, reason=str(exc)
        ) from None


def _template(field: str, source: str, env: BoundedEnvironment) -> Template | None:
    """The source compiled as the senders compile it (so an unknown filter is caught here too)."""
    if not source:
        return None
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise InvalidArgument(
            "%(field)s has a template error on line %(line)s: %(reason)s",
            field=field,
            line=exc.lineno,
            reason=exc.message,
        ) from None


def check_limits(
    subject: str, text_body: str, html_body: str, fields: Mapping[str, Any] = templating.SAMPLE_FIELDS
) -> None:
    """Render the parts as a sender would, on one budget; raise InvalidArgument naming the part and the limit.

    CPU-bound for up to the render time limit: callers on an event loop run it in a thread.
    """
    parts = (
        ("subject", _template("subject", subject, templating.PLAIN)),
        ("text_body", _template("text_body", text_body, templating.PLAIN)),
        ("html_body", _template("html_body", html_body, templating.HTML)),
    )
    try:
        templating.check_within_limits(parts, fields)
    except TemplateLimitExceeded as exc:
        raise InvalidArgument.of(exc) from None


def validate_draft(draft: CampaignDraft) -> CampaignDraft:
    """Return the draft cleaned up, or raise InvalidArgument naming the first thing wrong.

    Its templates are tried within the render limits (see check_limits), so this may take a moment.
    """
    if not draft.list_ids and not draft.segment_ids:
        raise InvalidArgument("list_ids: a campaign needs at least one list or segment")
    if any(list_id <= 0 for list_id in (*draft.list_ids, *draft.segment_ids)):
        raise InvalidArgument("list_ids, segment_ids: ids are positive numbers")
    if not draft.html_body.strip() and not draft.text_body.strip():
        raise InvalidArgument("a campaign needs an HTML body, a text body or both")
    check_limits(draft.subject, draft.text_body, draft.html_body)
    return CampaignDraft(
        name=_header_text("name", draft.name, 200, True),
        list_ids=tuple(dict.fromkeys(draft.list_ids)),
        from_name=_header_text("from_name", draft.from_name, 200, False),
        from_address=_address("from_address", draft.from_address, True),
        reply_to=_address("reply_to", draft.reply_to, False),
        subject=_header_text("subject", draft.subject, 900, True),
        html_body=draft.html_body,
        text_body=draft.text_body,
        segment_ids=tuple(dict.fromkeys(draft.segment_ids)),
        tracking=draft.tracking,
    )
