"""When to try a deferred batch again, and when to give up on it."""

from __future__ import annotations


def backoff_seconds(delivery_count: int, base: float, cap: float) -> float:
    """Exponential backoff: base after the first delivery, doubling with each one, at most cap."""
    exponent = max(0, delivery_count - 1)
    if exponent > 60:
        return cap
    return min(cap, base * (2**exponent))


def next_retry_delay(delivery_count: int, age: float, base: float, cap: float, give_up: float) -> float:
    """The nak delay: the backoff, shortened so the retry after the give-up age comes without waiting on."""
    remaining = max(0.0, give_up - age)
    return max(0.05, min(backoff_seconds(delivery_count, base, cap), remaining + 0.05))


def given_up(age: float, give_up: float) -> bool:
    """True once a batch is as old as the give-up age: its deferred recipients expire."""
    return age >= give_up
