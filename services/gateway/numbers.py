"""Numbers a form or an address names (ids, counts), read strictly: a bad one is a 400, never a 500.

Werkzeug's `type=int` turns "abc" into the default silently and lets 2**70 through to protobuf, which
then raises (a 500); ids here are positive and fit the int64 every contract uses.
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import abort

INT64_MAX = 2**63 - 1


def form_id(value: str | None) -> int:
    """An optional id: 0 when absent, empty or "0" (a page's "none yet"), else an int64 (400 otherwise)."""
    if not value:
        return 0
    if not value.isascii() or not value.isdigit() or int(value) > INT64_MAX:
        abort(400)
    return int(value)


def form_ids(values: Iterable[str]) -> list[int]:
    """Ids chosen in a form (empty entries skipped), each a positive int64 (400 otherwise)."""
    return [form_id(v) for v in values if v]


def form_count(value: str | None, default: int, maximum: int) -> int:
    """A count a page sent back (rows, groups): `default` when absent, at most `maximum` (400 if not a number)."""
    if not value:
        return default
    if not value.isascii() or not value.isdigit():
        abort(400)
    return min(int(value[:19]), maximum)
