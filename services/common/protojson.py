"""Protobuf messages as plain JSON values, for the services that keep or show a message as a tree."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def _whole(value: Any) -> Any:
    # JSON numbers of a protobuf Value are floats: the whole ones become ints again (list ids, counts; the
    # console's builder shows 120, not 120.0).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


def message_tree(message: Message) -> dict[str, Any]:
    """The message as a tree of dicts with its fields' proto names, whole numbers as ints."""
    return _whole(json_format.MessageToDict(message, preserving_proto_field_name=True))
