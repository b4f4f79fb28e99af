"""Checking what people put into lists: addresses, names and custom fields, before anything is stored.

Names and attribute values end up in message headers and bodies, so line breaks and other control
characters are refused here rather than escaped later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email

from services.common.errors import InvalidArgument, Problem

MAX_ROWS = 10_000
MAX_NAME = 200
MAX_LIST_NAME = 200
MAX_DESCRIPTION = 2000
MAX_ATTRIBUTES_JSON = 16 * 1024
ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class SubscriberRow:
    """One row as given: address, name and the attributes as JSON text."""

    email: str
    name: str = ""
    attributes_json: str = ""


@dataclass(frozen=True)
class ValidSubscriber:
    """A row that passed: the normalised address and canonical attributes JSON."""

    index: int
    email: str
    name: str
    attributes_json: str


@dataclass(frozen=True)
class RowProblem:
    """Why one row was refused."""

    index: int
    email: str
    message: str


# Unicode category Cc (C0, DEL, C1) plus the line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    """True if the text holds a line break, NUL or other control character."""
    return _CONTROL.search(text) is not None


def _describe(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def check_email(email: str) -> str:
    """Return the address normalised (domain lower-cased, Unicode NFC), or raise ValueError saying why."""
    if not email.strip():
        raise Problem("the email address is empty")
    try:
        return validate_email(email, check_deliverability=False, allow_smtputf8=True).normalized
    except EmailNotValidError as exc:
        raise Problem(
            "%(address)s is not an email address: %(reason)s", address=_describe(email), reason=str(exc)
        ) from None


def check_sender_address(address: str) -> str:
    """Return an address a From header can carry (ASCII local part, the domain in IDNA form), or raise saying why."""
    try:
        checked = validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise Problem(
            "%(address)s cannot be the sender address: %(reason)s", address=_describe(address), reason=str(exc)
        ) from None
    return checked.ascii_email or checked.normalized


def check_name(name: str) -> str:
    """Return a subscriber name that is one line of at most 200 characters."""
    if len(name) > MAX_NAME:
        raise Problem("the name is longer than %(limit)s characters", limit=MAX_NAME)
    if has_control(name):
        raise Problem("the name %(name)s contains a line break or control character", name=_describe(name))
    return name


def _reject_constant(name: str) -> Any:
    raise Problem("%(constant)s is not allowed in attributes_json", constant=name)


def _check_value(key: str, value: Any) -> None:
    if isinstance(value, str):
        if has_control(value):
            raise Problem("attribute %(key)r contains a line break or control character", key=key)
    elif isinstance(value, dict):
        for inner_key, inner in value.items():
            if has_control(inner_key):
                raise Problem("attribute %(key)r has a key with a control character", key=key)
            _check_value(key, inner)
    elif isinstance(value, list):
        for inner in value:
            _check_value(key, inner)


def check_attributes(text: str) -> str:
    """Return canonical JSON for an attributes object (empty means none), or raise ValueError saying why."""
    if not text.strip():
        return "{}"
    if len(text) > MAX_ATTRIBUTES_JSON:
        raise Problem("attributes_json is longer than %(limit)s bytes", limit=MAX_ATTRIBUTES_JSON)
    try:
        # NaN and Infinity are not JSON and PostgreSQL would refuse them.
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise Problem("attributes_json is not valid JSON: %(reason)s", reason=str(exc)) from None
    if not isinstance(data, dict):
        raise Problem('attributes_json must be a JSON object such as {"plan": "gold"}')
    for key, value in data.items():
        if not ATTRIBUTE_KEY.fullmatch(key):
            raise Problem(
                "attribute name %(key)s must be letters, digits or _, not start with a digit, at most 64 characters",
                key=_describe(key),
            )
        _check_value(key, value)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def check_rows(rows: Sequence[SubscriberRow]) -> tuple[list[ValidSubscriber], list[RowProblem]]:
    """Split rows into valid subscribers and problems; a repeated address keeps its last valid row."""
    if len(rows) > MAX_ROWS:
        raise InvalidArgument(
            "%(rows)s rows is more than %(limit)s per call; send them in parts", rows=len(rows), limit=MAX_ROWS
        )
    by_address: dict[str, ValidSubscriber] = {}
    problems: list[RowProblem] = []
    for index, row in enumerate(rows):
        try:
            email = check_email(row.email)
            valid = ValidSubscriber(index, email, check_name(row.name), check_attributes(row.attributes_json))
        except ValueError as exc:
            problems.append(RowProblem(index, row.email, str(exc)))
            continue
        # The database treats addresses case-insensitively; so must the merge, or one statement
        # would update the same row twice.
        key = email.lower()
        by_address.pop(key, None)
        by_address[key] = valid
    return list(by_address.values()), problems


def check_list_fields(name: str, description: str) -> tuple[str, str]:
    """Return a list's name and description, or refuse them saying why."""
    if not name.strip():
        raise InvalidArgument("the list name must not be empty")
    if len(name) > MAX_LIST_NAME:
        raise InvalidArgument("the list name is longer than %(limit)s characters", limit=MAX_LIST_NAME)
    if has_control(name):
        raise InvalidArgument("the list name %(name)s contains a line break or control character", name=_describe(name))
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument("the description is longer than %(limit)s characters", limit=MAX_DESCRIPTION)
    if has_control(description.replace("\n", "")):
        raise InvalidArgument("the description contains control characters")
    return name, description
