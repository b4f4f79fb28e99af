"""What a consumer decides about one message: the four outcomes a JetStream runner settles it with.

Plain values without any transport, so that domain code can decide (Postal's sent / soft fail / hard
fail) and `services/common/runner.py` does the acknowledging.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ack:
    """Done with: the message is acknowledged and never seen again."""

    name = "ack"


@dataclass(frozen=True)
class Nak:
    """Not done yet: the message comes back after `delay` seconds (0: at once)."""

    delay: float = 0.0
    name = "nak"


@dataclass(frozen=True)
class Term:
    """Never to be done: the message is dropped without redelivery, for the logged reason."""

    reason: str
    name = "term"


@dataclass(frozen=True)
class DeadLetter:
    """Unusable as it is: kept on the dead-letter stream with the reason, then dropped."""

    reason: str
    name = "dead_letter"


Decision = Ack | Nak | Term | DeadLetter
