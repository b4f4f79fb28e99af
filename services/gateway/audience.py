"""What the console's audience blueprints share (audience_fields, _imports, _subscribers, _privacy, _segments,
_suppression, _signup, one per sub-domain of lists): refusals shown as flashes, streamed downloads, the
organisation's custom fields, and the enum names of forms and filters."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from flask import Response, abort, flash, request, stream_with_context
from flask_babel import gettext as _
from google.protobuf import json_format
from mailblast.v1 import lists_fields_pb2, lists_segments_pb2

from services.common.protojson import message_tree
from services.gateway.clients import BackendError, backends, call, stream
from services.gateway.statuses import SUBSCRIBER_STATUSES

FORM_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)
FIELD_TYPES = {
    "text": lists_fields_pb2.FIELD_TYPE_TEXT,
    "number": lists_fields_pb2.FIELD_TYPE_NUMBER,
    "date": lists_fields_pb2.FIELD_TYPE_DATE,
    "choice": lists_fields_pb2.FIELD_TYPE_CHOICE,
}
FIELD_TYPE_NAMES = {v: k for k, v in FIELD_TYPES.items()}
EXPORT_ENCODINGS = ("utf-8", "shift_jis")
STATUS_VALUES = {v: k for k, v in SUBSCRIBER_STATUSES.items()}


def refused(exc: BackendError) -> None:
    """Show a refusal of a form's input as a flash; any other refusal goes on to the error page."""
    if exc.code not in FORM_ERRORS:
        raise exc
    flash(_("Refused: %(reason)s", reason=exc.message), "error")


def defined_fields() -> list[lists_fields_pb2.CustomField]:
    """The organisation's custom fields."""
    return list(call(backends().lists_fields.ListFields, lists_fields_pb2.ListFieldsRequest()).fields)


def opened(method: Callable, message: Any) -> Iterator:
    """A server-streaming RPC's items; a refusal before the first one is raised here, as a BackendError."""
    items: Iterator = stream(method, message)
    try:
        first = next(items, None)
    except grpc.RpcError as exc:
        raise BackendError.from_rpc(exc) from None
    return itertools.chain([first] if first is not None else [], items)


def attachment(body: Iterator[bytes], filename: str, mimetype: str) -> Response:
    """A streamed download."""
    response = Response(stream_with_context(body), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def download(method: Callable, message: Any, filename: str, mimetype: str) -> Response:
    """Stream a FileChunk RPC to the browser; a refusal before the first chunk is an ordinary error page."""
    chunks = opened(method, message)
    return attachment((chunk.data for chunk in chunks), filename, mimetype)


def export_encoding() -> str:
    """The encoding an export link asks for (utf-8 or shift_jis); another is a 400."""
    encoding = request.args.get("encoding", "utf-8")
    if encoding not in EXPORT_ENCODINGS:
        abort(400)
    return encoding


def csv_type(encoding: str) -> str:
    """The Content-Type of a CSV in that encoding."""
    return "text/csv; charset=shift_jis" if encoding == "shift_jis" else "text/csv; charset=utf-8"


def condition_tree(root: lists_segments_pb2.SegmentCondition) -> dict[str, Any]:
    """A segment's conditions as the builder's tree of dicts."""
    return message_tree(root)


def condition_message(tree: dict[str, Any]) -> lists_segments_pb2.SegmentCondition:
    """The builder's tree as the SegmentCondition lists takes."""
    return json_format.ParseDict(tree, lists_segments_pb2.SegmentCondition())
