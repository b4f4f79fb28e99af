"""Asking the senders to deliver one transactional message (password reset, opt-in, test send)."""

from __future__ import annotations

import json

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


async def send(
    js: JetStreamContext,
    *,
    organization_id: int,
    key: str,
    to_address: str,
    to_name: str,
    from_address: str,
    from_name: str,
    subject: str,
    text_body: str,
    html_body: str = "",
    category: str,
    variables: dict[str, str] | None = None,
) -> None:
    """Publish one transactional mail given as plain values (what a service's domain composes)."""
    content = events_pb2.MessageContent(
        from_name=from_name, from_address=from_address, subject=subject, text_body=text_body, html_body=html_body
    )
    message = events_pb2.TransactionalMessage(
        organization_id=organization_id,
        message_key=key,
        to_address=to_address,
        to_name=to_name,
        content=content,
        variables_json=json.dumps(variables or {}, ensure_ascii=False),
        category=category,
    )
    await send_transactional(js, message)
