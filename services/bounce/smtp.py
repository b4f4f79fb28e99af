"""The inbound SMTP side: only signed VERP return paths are accepted, bare line endings are refused."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiosmtpd.smtp import Envelope, Session

from services.common.log import get_logger
from services.common.verp import parse_return_path

log = get_logger(__name__)

# A LF not preceded by CR, or a CR not followed by LF: what SMTP smuggling (CVE-2023-51764) relies on.
_BARE_LINE_ENDING = re.compile(rb"(?<!\r)\n|\r(?!\n)")

NO_SUCH_ADDRESS = "550 5.1.1 no such bounce address"
BARE_LINE_ENDING_REFUSED = "550 5.6.11 message refused: bare LF or CR line ending; SMTP requires CRLF (RFC 5321 2.3.8)"
TRY_LATER = "451 4.3.0 bounce not recorded, please try again later"

# Records a received message for its envelope recipients; raising means "try again later".
MessageSink = Callable[[list[str], bytes], Awaitable[None]]


def has_bare_line_ending(data: bytes) -> bool:
    """True when the message has a LF without CR before it, or a CR without LF after it."""
    return _BARE_LINE_ENDING.search(data) is not None


class BounceHandler:
    """aiosmtpd handler: accepts mail for valid signed VERP addresses and hands it to the sink."""

    def __init__(self, key: bytes, sink: MessageSink) -> None:
        self._key = key
        self._sink = sink

    async def handle_RCPT(
        self, server: object, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        """Accept only addresses that verify as ours, whatever their domain."""
        if parse_return_path(self._key, address) is None:
            return NO_SUCH_ADDRESS
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        """Refuse smuggling-shaped data, else record the message."""
        data = bytes(envelope.original_content or b"")
        if has_bare_line_ending(data):
            return BARE_LINE_ENDING_REFUSED
        try:
            await self._sink(list(envelope.rcpt_tos), data)
        except Exception:
            # Anything going wrong here is ours: the sending MTA keeps the message and retries.
            log.exception("could not record a received bounce")
            return TRY_LATER
        return "250 OK bounce received"
