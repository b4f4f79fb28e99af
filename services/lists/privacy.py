"""Personal data as its owner gets it, apart from storage and transport."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any


def json_default(value: Any) -> Any:
    """Dates and times as ISO 8601 in the JSON of a subscriber's data."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")
