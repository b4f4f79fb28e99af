"""Asking the senders to deliver one transactional message (password reset, opt-in, test send)."""

from __future__ import annotations

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext

from services.common import bus


async def send_transactional(js: JetStreamContext, message: events_pb2.TransactionalMessage) -> None:
    """Publish one of the platform's own TransactionalMessages to its organisation's platform subject, keyed by
    its message_key (the Nats-Msg-Id)."""
    if not message.message_key:
        raise ValueError("a transactional message needs a message_key (its idempotency key)")
    if not message.HasField("created_at"):
        # The senders give up on a message deferred for too long, counting from created_at.
        message.created_at.GetCurrentTime()
    # The platform's own mails (a lockout notice, an opt-in confirmation) belong to the organisation
    # of the person they are sent to; the sender refuses a message whose organisation is not its subject's.
    subject = bus.transactional_subject(message.organization_id, platform=True)
    await bus.publish(js, subject, message, msg_id=message.message_key)
