"""Auth's notices handed to the senders: a TransactionalMessage on its organisation's JetStream subject."""

from __future__ import annotations

import json

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext

from services.auth.notices import Notice
from services.auth.security import SendMail
from services.common import mail


def transactional_message(notice: Notice) -> events_pb2.TransactionalMessage:
    """The TransactionalMessage that delivers a notice."""
    return events_pb2.TransactionalMessage(
        organization_id=notice.organization_id,
        message_key=notice.message_key,
        to_address=notice.to_address,
        to_name=notice.to_name,
        content=events_pb2.MessageContent(
            from_name=notice.from_name,
            from_address=notice.from_address,
            subject=notice.subject,
            text_body=notice.text_body,
            html_body=notice.html_body,
        ),
        variables_json=json.dumps(notice.variables, ensure_ascii=False),
        category=notice.category,
    )


def mailer(js: JetStreamContext) -> SendMail:
    """AccountSecurity's SendMail: publish each notice once (its message_key is the Nats-Msg-Id)."""

    async def send(notice: Notice) -> None:
        await mail.send_transactional(js, transactional_message(notice))

    return send
