"""A clock tests move forward instead of sleeping (auth's lockouts, lists' mail limits go by it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class MovableClock:
    """The real time plus an offset that only the test changes."""

    def __init__(self) -> None:
        self._offset = timedelta(0)

    def now(self) -> datetime:
        """The current time, as far as the service can tell."""
        return datetime.now(UTC) + self._offset

    def advance(self, seconds: float = 0.0, **delta: float) -> None:
        """Move the clock forward, e.g. advance(1801) or advance(minutes=16)."""
        self._offset += timedelta(seconds=seconds, **delta)
