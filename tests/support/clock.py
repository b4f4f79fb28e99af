"""A clock the tests move, for behaviour that depends on how much time has passed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class MovableClock:
    """Stands still at a fixed time until the test moves it forward; call it for the current time."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        """The clock's current time."""
        return self.now

    def advance(self, **delta: float) -> None:
        """Move the clock forward, e.g. advance(minutes=16)."""
        self.now += timedelta(**delta)
