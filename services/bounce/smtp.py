"""The inbound SMTP side: only signed VERP return paths are accepted, bare line endings are refused.

The listener faces the internet, so every session is bounded: connections in total and per client
address, time between commands, time for the whole DATA phase, and the message size, enforced while
the message is read (no more than the limit is ever held, and the buffer is freed when the session
ends, however it ends).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from services.common.log import get_logger
from services.common.verp import parse_return_path

log = get_logger(__name__)

# A LF not preceded by CR, or a CR not followed by LF: what SMTP smuggling (CVE-2023-51764) relies on.
_BARE_LINE_ENDING = re.compile(rb"(?<!\r)\n|\r(?!\n)")

NO_SUCH_ADDRESS = "550 5.1.1 no such bounce address"
BARE_LINE_ENDING_REFUSED = "550 5.6.11 message refused: bare LF or CR line ending; SMTP requires CRLF (RFC 5321 2.3.8)"
TRY_LATER = "451 4.3.0 bounce not recorded, please try again later"
TOO_MANY_CONNECTIONS = b"421 4.7.0 too many connections, try again later\r\n"
TOO_MANY_FROM_YOU = b"421 4.7.0 too many connections from your address, try again later\r\n"
TIMED_OUT = b"421 4.4.2 timeout, closing connection\r\n"
TOO_BIG = "552 5.3.4 message exceeds the size limit of %d bytes"
LINE_TOO_LONG = "500 5.5.2 line too long (RFC 5321 4.5.3.1.6)"
# After a 552 mid-DATA, how long what the client still sends is read and dropped before closing.
DISCARD_SECONDS = 5.0

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


@dataclass(frozen=True)
class SessionLimits:
    """What one client may hold of the listener."""

    max_connections: int = 100
    max_connections_per_ip: int = 10
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    max_message_bytes: int = 10 * 1024 * 1024


class ConnectionCounter:
    """Open sessions, in total and by client address."""

    def __init__(self, limits: SessionLimits) -> None:
        self._limits = limits
        self._by_ip: Counter[str] = Counter()
        self.total = 0

    def admit(self, ip: str) -> bytes | None:
        """Count a new session, or return the 421 refusal when a limit is reached."""
        if self.total >= self._limits.max_connections:
            return TOO_MANY_CONNECTIONS
        if self._by_ip[ip] >= self._limits.max_connections_per_ip:
            return TOO_MANY_FROM_YOU
        self.total += 1
        self._by_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        """A counted session ended."""
        self.total -= 1
        self._by_ip[ip] -= 1
        if self._by_ip[ip] <= 0:
            del self._by_ip[ip]


class BoundedSMTP(SMTP):
    """aiosmtpd's SMTP session with connection limits, an idle and a DATA time limit, and size read-time checks."""

    def __init__(self, handler: Any, counter: ConnectionCounter, limits: SessionLimits, **kwargs: Any) -> None:
        super().__init__(handler, data_size_limit=limits.max_message_bytes, timeout=limits.idle_timeout, **kwargs)
        self._counter = counter
        self._limits = limits
        self._client_ip: str | None = None
        self._refused = False
        self._ending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the client, or tell it 421 and close before anything else happens."""
        if self._client_ip is None and not self._refused:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else ""
            refusal = self._counter.admit(ip)
            if refusal is not None:
                self._refused = True
                log.info("smtp connection refused", peer=ip, reason=refusal.decode().strip())
                transport.write(refusal)
                transport.close()
                return
            self._client_ip = ip
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Give the session's place back."""
        if self._refused:
            return
        if self._client_ip is not None:
            self._counter.release(self._client_ip)
            self._client_ip = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """A refused client hanging up needs nothing more."""
        if self._refused:
            return False
        return super().eof_received()

    def _timeout_cb(self) -> None:
        # The idle or DATA limit is up: say so (RFC 5321 4.2.2, 421) before closing.
        if self.transport is not None and not self._ending:
            self.transport.write(TIMED_OUT)
        super()._timeout_cb()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """Read the message within the DATA time limit, refusing it with 552 the moment it passes the size limit."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        # The whole DATA phase has one deadline, so a client trickling a line now and then is cut off.
        self._reset_timeout(self._limits.data_timeout)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = bytearray()
        try:
            outcome = await self._read_message(data)
            content = bytes(data) if outcome == "complete" else b""
        finally:
            # However the session ends (even cancelled mid-DATA), the buffer goes now, not with the task.
            data.clear()
        self._reset_timeout()
        if outcome == "too big":
            # Refused as soon as it passed the limit, and the session ends: nothing more is kept.
            await self.push(TOO_BIG % self._limits.max_message_bytes)
            await self._end_after_refusal()
            return
        if outcome == "line too long":
            self._set_post_data_state()
            await self.push(LINE_TOO_LONG)
            return
        self.envelope.original_content = self.envelope.content = content
        status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
        self._set_post_data_state()
        await self.push(status)

    async def _end_after_refusal(self) -> None:
        """Close our side at once; drop what the client still sends for a few seconds, then hang up.

        A plain close with the client's data unread would reset the connection, and the client might
        lose the 552 before reading it.
        """
        assert self.transport is not None
        self._ending = True
        self._reset_timeout(min(DISCARD_SECONDS, self._limits.data_timeout))
        self.transport.write_eof()
        while await self._reader.read(64 * 1024):
            pass
        self.transport.close()

    async def _read_message(self, data: bytearray) -> str:
        """Read DATA lines into `data` (dot-unstuffed) until the lone dot: complete, too big or line too long."""
        limit = self._limits.max_message_bytes
        received = 0
        in_long_line = too_long = False
        while True:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                # A line longer than SMTP allows: drop what came of it, refuse the message at its end.
                line = await self._reader.read(exc.consumed)
                received += len(line)
                in_long_line = too_long = True
                if received > limit:
                    return "too big"
                continue
            if line == b".\r\n" and not in_long_line:
                return "line too long" if too_long else "complete"
            received += len(line)
            if received > limit:
                return "too big"
            if in_long_line:
                in_long_line = False
                continue
            if not too_long:
                data += line[1:] if line.startswith(b".") else line
