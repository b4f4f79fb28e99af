"""Custom fields: typed definitions per organisation and the check of every value written against them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from services.common.errors import Problem
from services.lists.validation import ATTRIBUTE_KEY, has_control

FIELD_TYPES = ("text", "number", "date", "choice")
MAX_TEXT = 1000
MAX_OPTIONS = 200
_DATE = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")
# Addresses, names and statuses are columns of their own; a field must not shadow them in campaigns.
RESERVED_KEYS = frozenset({"email", "name", "status", "id", "subscriber_id", "unsubscribe_url"})


@dataclass(frozen=True)
class FieldDef:
    """One custom field of an organisation."""

    id: int
    key: str
    label: str
    type: str
    options: tuple[str, ...]


def check_definition(key: str, label: str, type_: str, options: Sequence[str]) -> tuple[str, str, str, list[str]]:
    """Return a field definition cleaned up, or raise ValueError saying what is wrong."""
    if not ATTRIBUTE_KEY.fullmatch(key):
        raise Problem(
            "field key %(key)r must be letters, digits or _, not start with a digit, at most 64 long", key=key
        )
    if key.lower() in RESERVED_KEYS:
        raise Problem("field key %(key)r is reserved", key=key)
    if type_ not in FIELD_TYPES:
        raise Problem("field type must be one of %(types)s", types=", ".join(FIELD_TYPES))
    label = label.strip() or key
    if has_control(label) or len(label) > 200:
        raise Problem("the label must be one line of at most 200 characters")
    cleaned = [o.strip() for o in options if o.strip()]
    if type_ == "choice":
        if not cleaned:
            raise Problem("a choice field needs at least one option")
        if len(cleaned) > MAX_OPTIONS or len(set(cleaned)) != len(cleaned):
            raise Problem("options must be distinct and at most %(limit)s", limit=MAX_OPTIONS)
        if any(has_control(o) or len(o) > 200 for o in cleaned):
            raise Problem("each option must be one line of at most 200 characters")
    elif cleaned:
        raise Problem("only a choice field has options")
    return key, label, type_, cleaned


def parse_date(text: str) -> str:
    """Return an ISO date (YYYY-MM-DD) for YYYY-MM-DD or YYYY/MM/DD, or raise ValueError."""
    match = _DATE.fullmatch(text.strip())
    if match is None:
        raise Problem("%(value)r is not a date (YYYY-MM-DD or YYYY/MM/DD)", value=text)
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3))).isoformat()
    except ValueError:
        raise Problem("%(value)r is not a date that exists", value=text) from None


def parse_number(text: str) -> int | float:
    """Return the number a text holds ("1,234" allowed), or raise ValueError."""
    cleaned = text.strip().replace(",", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise Problem("%(value)r is not a number", value=text) from None
    if not value.is_finite():
        raise Problem("%(value)r is not a number", value=text)
    return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)


def coerce(field: FieldDef, value: Any) -> Any:
    """Return the value as stored for the field (None clears it), or raise ValueError naming the field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if field.type == "number":
            if isinstance(value, bool):
                raise Problem("%(value)r is not a number", value=value)
            return value if isinstance(value, int | float) else parse_number(str(value))
        text = value if isinstance(value, str) else str(value)
        if field.type == "date":
            return parse_date(text)
        if has_control(text):
            raise Problem("contains a line break or control character")
        if field.type == "choice":
            if text.strip() not in field.options:
                raise Problem("%(value)r is not one of %(options)s", value=text, options=", ".join(field.options))
            return text.strip()
        if len(text) > MAX_TEXT:
            raise Problem("is longer than %(limit)s characters", limit=MAX_TEXT)
        return text
    except ValueError as exc:
        raise Problem.of(exc, "field %(field)r: ", field=field.key) from None


def check_values(defs: Mapping[str, FieldDef], attributes_json: str) -> str:
    """Check an (already well-formed) attributes object against the definitions; return canonical JSON.

    Keys with a definition are type-checked and normalised; keys without one stay free text, as
    before fields existed (campaign personal fields may still use them).
    """
    if not defs:
        return attributes_json
    data = json.loads(attributes_json)
    out = {}
    for key, value in data.items():
        field = defs.get(key)
        if field is None:
            out[key] = value
            continue
        stored = coerce(field, value)
        if stored is not None:
            out[key] = stored
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))
