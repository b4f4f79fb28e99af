"""The narrow interfaces the send path depends on (listmonk's Store / Messenger seams).

PostgreSQL, NATS and SMTP implement them in store.py, store_copies.py, writer.py and smtp.py; tests hand
in in-memory ones (tests/unit/test_sender_sending.py). None of them asks another service: the campaign
gate and the suppression list are the sender's own copies, kept current from NATS.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.sender.decisions import Verdict
from services.sender.ledger import DeliveryResult, LedgerState, Outcome


@dataclass(frozen=True)
class Claim:
    """What a claim on a chunk of recipients found, all in one look at the ledger and the copies.

    `claimed`: the subscriber ids now held by this pass (none when the campaign is paused or cancelled);
    `withheld`: those of them never to be offered, with the reason (the suppression's, or "erased");
    `verdict`: the campaign's state as the copy holds it.
    """

    claimed: frozenset[int]
    withheld: Mapping[int, str] = field(default_factory=dict)
    verdict: Verdict = Verdict.GO


class Ledger(Protocol):
    """The delivery ledger: where each recipient and transactional message stands, and claims."""

    async def states(self, campaign_id: int, subscriber_ids: Sequence[int]) -> dict[int, LedgerState]:
        """The ledger state of the given recipients of a campaign (absent ones have none yet)."""
        ...

    async def claim(
        self, organization_id: int, campaign_id: int, recipients: Sequence[tuple[int, str]], owner: str, lease: float
    ) -> Claim:
        """Claim (subscriber id, email) pairs for `owner` for `lease` seconds, unless the campaign is halted."""
        ...

    async def renew(self, campaign_id: int, owner: str, lease: float) -> int:
        """Extend `owner`'s claims on the campaign's recipients to `lease` seconds from now; how many it holds."""
        ...

    async def transactional_state(self, organization_id: int, message_key: str) -> LedgerState | None:
        """The ledger state of one transactional message, or None before its first attempt."""
        ...

    async def erased_since(self, organization_id: int, email: str, asked_at: dt.datetime | None) -> bool:
        """Whether a subscriber with this address was erased at or after `asked_at` (None: ever)."""
        ...


class Recorder(Protocol):
    """Writes outcomes to the ledger and reports them; the future is done once both happened."""

    def submit(self, outcome: Outcome) -> Awaitable[object]:
        """Queue one outcome."""
        ...


class Transport(Protocol):
    """Offers one message for one recipient (SMTP); the result is never an exception."""

    async def deliver(self, envelope_from: str, recipient: str, message: bytes) -> DeliveryResult:
        """The result of offering `message` to the recipient's mail server."""
        ...


class CampaignGate(Protocol):
    """Whether a campaign's batches may be delivered now."""

    async def verdict(self, organization_id: int, campaign_id: int) -> Verdict:
        """GO, PAUSED or CANCELLED."""
        ...


class SuppressionList(Protocol):
    """The organisations' suppression lists."""

    async def suppressed(self, organization_id: int, emails: Sequence[str]) -> dict[str, str]:
        """The suppressed ones among `emails` (as given) with their reasons."""
        ...
