"""The sender's JetStream runners: send work in (batches, transactional mail), copies kept current.

Each decodes, converts to the domain (convert.py) and hands over: the send decisions live in
sending.py, transactional.py and decisions.py; the copies in store_copies.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext

from services.common import bus
from services.common.runner import Ack, DeadLetter, Decision, Delivery, GroupRunner, Runner
from services.sender import convert
from services.sender.sending import BatchSending
from services.sender.store_copies import CopyStore
from services.sender.transactional import TransactionalSending

DURABLE = "sender-batches"
TRANSACTIONAL_DURABLE = "sender-transactional"
CAMPAIGN_STATES_DURABLE = "sender-campaign-states"
SUPPRESSIONS_DURABLE = "sender-suppressions"
# Transactional messages fetched at once; each is worked on in its own slot.
TRANSACTIONAL_FETCH = 16
# Copy changes worked on at once: they are written in groups, so a replay of a whole suppression
# list (a new installation, the first start after an upgrade) goes hundreds per transaction.
COPY_SLOTS = 500
# The keyed hash of services/common/privacy.py: HMAC-SHA256, hex.
_HASH_LENGTH = 64

P = TypeVar("P", events_pb2.CampaignStateChanged, events_pb2.SuppressionChanged)
Write = Callable[[Sequence[Any]], Awaitable[Sequence[None]]]


class BatchConsumer(Runner[events_pb2.SendBatch]):
    """sender-batches: each SendBatch delivered by BatchSending; a few batches at once per process."""

    payload_type = events_pb2.SendBatch
    span_name = "send batch"

    def __init__(
        self,
        js: JetStreamContext,
        sending: BatchSending,
        *,
        batches_in_flight: int,
        ack_wait: float,
        retry_delay: float,
    ) -> None:
        super().__init__(
            js, stream=bus.STREAM_SEND, durable=DURABLE, subject=bus.SUBJECT_SEND_BATCH, slots=batches_in_flight,
            fetch=1, ack_wait=ack_wait, retry_delay=retry_delay,
        )  # fmt: skip
        self._sending = sending

    def describe(self, batch: events_pb2.SendBatch, delivery: Delivery) -> dict[str, Any]:
        """The batch's campaign, number and size."""
        return {
            "mailblast.organization_id": batch.organization_id,
            "mailblast.campaign_id": batch.campaign_id,
            "mailblast.batch_number": batch.batch_number,
            "mailblast.recipients": len(batch.recipients),
        }

    async def dispose(self, batch: events_pb2.SendBatch, delivery: Delivery) -> Decision:
        """Deliver the batch's recipients not yet final; ack, retry the deferred later, or drop."""
        return await self._sending.send(convert.batch(batch), delivery.count)


class TransactionalConsumer(Runner[events_pb2.TransactionalMessage]):
    """sender-transactional: each TransactionalMessage delivered once per key by TransactionalSending."""

    payload_type = events_pb2.TransactionalMessage
    span_name = "send transactional"

    def __init__(
        self, js: JetStreamContext, sending: TransactionalSending, *, slots: int, ack_wait: float, retry_delay: float
    ) -> None:
        super().__init__(
            js, stream=bus.STREAM_SEND, durable=TRANSACTIONAL_DURABLE, subject=bus.SUBJECT_SEND_TRANSACTIONAL,
            slots=slots, fetch=TRANSACTIONAL_FETCH, ack_wait=ack_wait, retry_delay=retry_delay,
        )  # fmt: skip
        self._sending = sending

    def describe(self, message: events_pb2.TransactionalMessage, delivery: Delivery) -> dict[str, Any]:
        """The message's organisation, key and category."""
        return {
            "mailblast.organization_id": message.organization_id,
            "mailblast.message_key": message.message_key,
            "mailblast.category": message.category,
        }

    async def dispose(self, message: events_pb2.TransactionalMessage, delivery: Delivery) -> Decision:
        """Deliver the message once per key; one that names no key or another organisation is kept aside."""
        if not message.message_key or message.organization_id <= 0:
            return DeadLetter("TransactionalMessage without message_key or organization_id")
        if bus.subject_organization(delivery.subject) != message.organization_id:
            # NATS lets a credential publish only its own organisation's subject; a payload naming
            # another organisation is an attempt to send as that one, and is never delivered.
            return DeadLetter(
                f"TransactionalMessage of organisation {message.organization_id} published to {delivery.subject}: "
                "the organisation must match the subject's"
            )
        platform = bus.is_platform_subject(delivery.subject)
        return await self._sending.send(convert.transactional(message, platform=platform), delivery.count)


class _Copier(GroupRunner[P, Any]):
    """A runner that writes the changes it is given in groups, through `writer`."""

    def __init__(self, js: JetStreamContext, stream: str, durable: str, subject: str, write: Write) -> None:
        super().__init__(js, write=write, stream=stream, durable=durable, subject=subject, slots=COPY_SLOTS)


class CampaignStateCopier(_Copier[events_pb2.CampaignStateChanged]):
    """sender-campaign-states: keeps campaign_states_copy current; one durable for all sender processes."""

    payload_type = events_pb2.CampaignStateChanged
    span_name = "copy campaign state"

    def __init__(self, js: JetStreamContext, copies: CopyStore) -> None:
        super().__init__(
            js, bus.STREAM_CAMPAIGN_STATE, CAMPAIGN_STATES_DURABLE, bus.SUBJECT_CAMPAIGN_STATE,
            copies.apply_campaign_states,
        )  # fmt: skip

    def describe(self, event: events_pb2.CampaignStateChanged, delivery: Delivery) -> dict[str, Any]:
        """The campaign and its version."""
        return {"mailblast.campaign_id": event.campaign_id, "mailblast.version": event.version}

    async def dispose(self, event: events_pb2.CampaignStateChanged, delivery: Delivery) -> Decision:
        """Apply the change unless the copy holds a newer one."""
        if event.organization_id <= 0 or event.campaign_id <= 0 or event.version <= 0:
            return DeadLetter("CampaignStateChanged lacks an organisation, a campaign or a version")
        await self.writer.submit(convert.campaign_state_change(event))
        return Ack()


class SuppressionCopier(_Copier[events_pb2.SuppressionChanged]):
    """sender-suppressions: keeps suppressions_copy current; one durable for all sender processes."""

    payload_type = events_pb2.SuppressionChanged
    span_name = "copy suppression"

    def __init__(self, js: JetStreamContext, copies: CopyStore) -> None:
        super().__init__(
            js, bus.STREAM_SUPPRESSION, SUPPRESSIONS_DURABLE, bus.SUBJECT_SUPPRESSION_CHANGED, copies.apply_suppressions
        )

    def describe(self, event: events_pb2.SuppressionChanged, delivery: Delivery) -> dict[str, Any]:
        """The organisation and the change's version (never the address, nor its hash)."""
        return {"mailblast.organization_id": event.organization_id, "mailblast.version": event.version}

    async def dispose(self, event: events_pb2.SuppressionChanged, delivery: Delivery) -> Decision:
        """Apply the change unless the copy holds a newer one."""
        if event.organization_id <= 0 or len(event.email_hash) != _HASH_LENGTH or event.version <= 0:
            return DeadLetter("SuppressionChanged lacks an organisation, a keyed hash or a version")
        if event.suppressed and event.reason == events_pb2.SUPPRESSION_REASON_UNSPECIFIED:
            return DeadLetter("SuppressionChanged puts an address on the list without a reason")
        await self.writer.submit(convert.suppression_change(event))
        return Ack()
