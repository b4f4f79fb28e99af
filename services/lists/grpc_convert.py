"""What the lists servicers share at the protobuf edge: timestamps, page tokens, CSV streams, one-line checks."""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import lists_fields_pb2, lists_pb2

from services.common.errors import InvalidArgument, ServiceError
from services.common.spreadsheet import formula_safe_row
from services.lists import convert, validation
from services.lists.fields import FieldDef
from services.lists.store import MailingList, Subscriber

STREAM_BYTES = 256 * 1024
FIELD_TYPES = {
    lists_fields_pb2.FIELD_TYPE_TEXT: "text",
    lists_fields_pb2.FIELD_TYPE_NUMBER: "number",
    lists_fields_pb2.FIELD_TYPE_DATE: "date",
    lists_fields_pb2.FIELD_TYPE_CHOICE: "choice",
}
FIELD_TYPE_VALUES = {v: k for k, v in FIELD_TYPES.items()}


class ResourceExhausted(ServiceError):
    """Too many attempts from one place; try again later."""

    code_name = "RESOURCE_EXHAUSTED"


def ts(value: datetime | None) -> Timestamp | None:
    """A protobuf timestamp, or None."""
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value)
    return out


def mailing_list(item: MailingList) -> lists_pb2.MailingList:
    """A list with its head counts."""
    return lists_pb2.MailingList(
        id=item.id,
        name=item.name,
        description=item.description,
        active_count=item.active_count,
        subscriber_count=item.subscriber_count,
        created_at=ts(item.created_at),
    )


def subscriber(s: Subscriber) -> lists_pb2.Subscriber:
    """A subscriber, its status as the proto enum."""
    return lists_pb2.Subscriber(
        id=s.id,
        email=s.email,
        name=s.name,
        attributes_json=s.attributes_json,
        status=convert.status_pb(s.status),
        hard_bounce_count=s.hard_bounce_count,
        last_bounce_reason=s.last_bounce_reason,
        created_at=ts(s.created_at),
        updated_at=ts(s.updated_at),
    )


def custom_field(d: FieldDef, created_at: datetime | None = None) -> lists_fields_pb2.CustomField:
    """A custom field definition."""
    return lists_fields_pb2.CustomField(
        id=d.id,
        key=d.key,
        label=d.label,
        type=FIELD_TYPE_VALUES[d.type],
        options=list(d.options),
        created_at=ts(created_at),
    )


def bounded(value: int, default: int, maximum: int, what: str) -> int:
    """A page or chunk size: the default for 0, at most `maximum`; negative is refused."""
    if value < 0:
        raise InvalidArgument("%(what)s must not be negative", what=what)
    return min(value or default, maximum)


def page_token(after: int) -> str:
    """The opaque token of the page after id `after`."""
    return base64.urlsafe_b64encode(f"s:{after}".encode()).decode().rstrip("=")


def read_page_token(token: str) -> int:
    """The id a page token continues after (0 for none)."""
    if not token:
        return 0
    try:
        kind, after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split(":")
        if kind != "s":
            raise ValueError
        return int(after)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this service gave out; start again without it") from None


def one_line(text: str, what: str, limit: int = 2000) -> str:
    """`text` when it is one line of at most `limit` characters; else INVALID_ARGUMENT naming `what`."""
    if validation.has_control(text) or len(text) > limit:
        raise InvalidArgument("%(what)s must be one line of at most %(limit)s characters", what=what, limit=limit)
    return text


def export_encoding(requested: str) -> str:
    """The encoding an export was asked for (utf-8 by default)."""
    value = (requested or "utf-8").lower()
    if value not in ("utf-8", "utf8", "shift_jis", "sjis", "cp932"):
        raise InvalidArgument("encoding must be utf-8 or shift_jis")
    return value


def _encode(text: str, encoding: str) -> bytes:
    if encoding in ("shift_jis", "sjis", "cp932"):
        return text.encode("cp932", "replace")
    return text.encode("utf-8")


async def csv_stream(
    rows: AsyncIterator[Iterable[list[Any]]], header: list[str], encoding: str
) -> AsyncIterator[lists_pb2.FileChunk]:
    """Yield FileChunks of CSV text encoded as asked (UTF-8 with a BOM so Excel reads it), formulas defused."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(formula_safe_row(header))
    prefix = b"\xef\xbb\xbf" if encoding.startswith("utf") else b""
    async for page in rows:
        for row in page:
            writer.writerow(formula_safe_row(row))
        if buf.tell() >= STREAM_BYTES:
            yield lists_pb2.FileChunk(data=prefix + _encode(buf.getvalue(), encoding))
            prefix = b""
            buf.seek(0)
            buf.truncate()
    yield lists_pb2.FileChunk(data=prefix + _encode(buf.getvalue(), encoding))
