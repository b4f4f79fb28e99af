"""Asking the senders to deliver one transactional message (password reset, opt-in, test send)."""

from __future__ import annotations

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext

from services.common import bus


async def send_transactional(js: JetStreamContext, message: events_pb2.TransactionalMessage) -> None:
    """Publish a TransactionalMessage; its message_key is the Nats-Msg-Id, so a repeat is dropped."""
    if not message.message_key:
        raise ValueError("a transactional message needs a message_key (its idempotency key)")
    if not message.HasField("created_at"):
        # The senders give up on a message deferred for too long, counting from created_at.
        message.created_at.GetCurrentTime()
    await bus.publish(js, bus.SUBJECT_SEND_TRANSACTIONAL, message, msg_id=message.message_key)
