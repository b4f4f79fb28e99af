"""Delivery over SMTP: MX or relay, STARTTLS, pooled connections, and the three outcomes of a send."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver
from aiosmtplib.protocol import normalize_message_line_endings

from services.common.log import get_logger
from services.sender.ledger import DeliveryResult, deferred, rejected, reply_result
from services.sender.mime import CrlfMessage

log = get_logger(__name__)

# A connection open for longer than this without use may have been dropped by the server.
_IDLE_SECONDS = 30.0
# Open a fresh connection after this many messages, so one session never lives for ever.
_MESSAGES_PER_CONNECTION = 1000


class _TemporaryDns(Exception):
    pass


class _PermanentDns(Exception):
    pass


Lookup = Callable[[str], Awaitable[list[tuple[str, int]]]]


def nameserver_address(text: str) -> tuple[str, int]:
    """The address and port of a nameserver given as host:port, [v6]:port or a bare address (port 53)."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r} is not a nameserver address: give IP:port, e.g. 127.0.0.1:53") from None
    if not 0 < number < 65536:
        raise ValueError(f"{text!r} has no valid port: give IP:port, e.g. 127.0.0.1:53")
    return host, number


def nameserver_resolver(nameserver: str = "") -> dns.asyncresolver.Resolver:
    """A resolver asking the given nameserver (host:port) only; empty: the system's (/etc/resolv.conf)."""
    if not nameserver:
        return dns.asyncresolver.Resolver()
    host, port = nameserver_address(nameserver)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    return resolver


class MxResolver:
    """The hosts that take mail for a domain, lowest MX preference first, cached for the record's TTL."""

    def __init__(
        self, resolver: dns.asyncresolver.Resolver | None = None, port: int = 25, nameserver: str = ""
    ) -> None:
        self._resolver = resolver or nameserver_resolver(nameserver)
        self._port = port
        self._cache: dict[str, tuple[float, list[tuple[str, int]] | Exception]] = {}

    async def __call__(self, domain: str) -> list[tuple[str, int]]:
        domain = domain.lower().rstrip(".")
        hit = self._cache.get(domain)
        now = time.monotonic()
        if hit and hit[0] > now:
            if isinstance(hit[1], Exception):
                raise hit[1]
            return hit[1]
        try:
            hosts, ttl = await self._lookup(domain)
        except _PermanentDns as exc:
            self._cache[domain] = (now + 300.0, exc)
            raise
        self._cache[domain] = (now + min(max(ttl, 30.0), 3600.0), hosts)
        if len(self._cache) > 50_000:
            self._cache.clear()
        return hosts

    async def _lookup(self, domain: str) -> tuple[list[tuple[str, int]], float]:
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise _PermanentDns(f"the domain {domain} does not exist") from None
        except dns.resolver.NoAnswer:
            # RFC 5321 5.1: without MX records the domain itself (its A/AAAA record) takes the mail.
            try:
                await self._resolver.resolve(domain, "A")
            except dns.resolver.NoAnswer:
                try:
                    await self._resolver.resolve(domain, "AAAA")
                except dns.resolver.NoAnswer:
                    raise _PermanentDns(f"the domain {domain} has no MX, A or AAAA record") from None
                except dns.exception.DNSException as exc:
                    raise _TemporaryDns(f"DNS lookup for {domain} failed: {exc}") from None
            except dns.resolver.NXDOMAIN:
                raise _PermanentDns(f"the domain {domain} does not exist") from None
            except dns.exception.DNSException as exc:
                raise _TemporaryDns(f"DNS lookup for {domain} failed: {exc}") from None
            return [(domain, self._port)], 300.0
        except dns.exception.DNSException as exc:
            raise _TemporaryDns(f"DNS lookup for {domain} failed: {exc}") from None
        records = sorted(answer, key=lambda r: r.preference)
        hosts = [(r.exchange.to_text(omit_final_dot=True), self._port) for r in records]
        if hosts == [("", self._port)] or hosts == [(".", self._port)]:
            # RFC 7505 null MX: the domain accepts no mail at all.
            raise _PermanentDns(f"the domain {domain} accepts no mail (null MX)")
        return hosts, float(answer.rrset.ttl if answer.rrset is not None else 300)


class _TlsUnavailable(Exception):
    pass


# What may not appear in an envelope address on the command line (it could end the command or start another).
_UNSAFE_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


class _Session(asyncio.Protocol):
    """The mail transactions of an SMTP session, once aiosmtplib has connected, said EHLO and STARTTLS.

    aiosmtplib reads exactly one reply per command it writes, and drops what arrives while no reply is
    awaited, so it cannot pipeline (RFC 2920); its per-command machinery (a lock, a wait_for timer, an
    injection check by regular expression, a future per reply) also cost more than the TLS record it
    writes. The session takes the transport over from it (transport.set_protocol) and queues every reply
    it parses, so MAIL, RCPT and DATA go in one write and their replies come in one read when the server
    offers PIPELINING; one command at a time when it does not. aiosmtplib keeps what it does well: the
    connection, the greeting, EHLO and STARTTLS.
    """

    def __init__(self, transport: asyncio.Transport, tls: bool, pipelining: bool) -> None:
        self.transport = transport
        self.tls = tls
        self.pipelining = pipelining
        self.used = 0
        self.last_used = 0.0
        self._buffer = bytearray()
        self._replies: deque[aiosmtplib.SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: Exception | None = None
        self._writable: asyncio.Future[None] | None = None
        transport.set_protocol(self)

    @property
    def is_connected(self) -> bool:
        """Whether the session can still carry a transaction."""
        return self._lost is None and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        """Queue every complete reply; a malformed one ends the session."""
        if not self._buffer and data[3:4] == b" " and data.find(b"\n") == len(data) - 1:
            # The common case: one whole single-line reply in one read.
            try:
                code = int(data[:3])
            except ValueError:
                pass
            else:
                self._replies.append(aiosmtplib.SMTPResponse(code, data[4:].strip().decode("utf-8", "surrogateescape")))
                self._wake()
                return
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > _MAX_REPLY:
                    self._fail(aiosmtplib.SMTPResponseException(-1, "reply line too long"))
                break
            # A multi-line reply is complete at its first line without "-" after the code.
            start, lines = 0, []
            while end >= 0:
                line = bytes(self._buffer[start : end + 1])
                lines.append(line)
                start = end + 1
                if line[3:4] != b"-":
                    break
                end = self._buffer.find(b"\n", start)
            else:
                break
            try:
                code = int(lines[0][:3])
            except ValueError:
                self._fail(aiosmtplib.SMTPResponseException(-1, f"malformed SMTP reply {lines[0][:60]!r}"))
                return
            message = "\n".join(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape") for line in lines)
            del self._buffer[:start]
            self._replies.append(aiosmtplib.SMTPResponse(code, message))
        self._wake()

    def _fail(self, exc: Exception) -> None:
        self._lost = exc
        self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """Whoever waits for a reply hears that the connection is gone."""
        if self._lost is None:
            self._lost = aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc}" if exc else "connection lost")
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        """The transport's buffer is full: writers wait (see drain)."""
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """The buffer has drained."""
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def write(self, data: bytes) -> None:
        """Send bytes, or raise once the session is gone."""
        if self._lost is not None:
            raise self._lost
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        if self._writable is not None:
            await self._writable
        if self._lost is not None:
            raise self._lost

    async def reply(self) -> aiosmtplib.SMTPResponse:
        """The next reply of the server, in order."""
        while not self._replies:
            if self._lost is not None:
                raise self._lost
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._replies.popleft()

    def close(self) -> None:
        """Drop the connection."""
        self._lost = self._lost or aiosmtplib.SMTPServerDisconnected("closed")
        self.transport.close()


# Replies longer than this (aiosmtplib's own bound) end the session.
_MAX_REPLY = 10 * 1024 * 1024


class _HostPool:
    """Idle connections to one host:port, and a bound on how many are open at once."""

    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.idle: deque[_Session] = deque()


class SmtpDelivery:
    """Sends messages one recipient at a time, keeping a few connections open per destination."""

    def __init__(
        self,
        *,
        ehlo_name: str,
        relay: tuple[str, int] | None = None,
        tls_required: bool = False,
        tls_ca_file: str = "",
        timeout: float = 60.0,
        connections_per_host: int = 8,
        lookup: Lookup | None = None,
    ) -> None:
        self._ehlo_name = ehlo_name
        self._relay = relay
        self._tls_required = tls_required
        self._timeout = timeout
        self._per_host = connections_per_host
        self._lookup = lookup or MxResolver()
        self._pools: dict[tuple[str, int], _HostPool] = {}
        self._closed = False
        if tls_required or tls_ca_file:
            self._tls_context = ssl.create_default_context(cafile=tls_ca_file or None)
        else:
            # Opportunistic TLS as MTAs practise it (RFC 7435): encrypt whenever offered, without
            # insisting on a certificate that would otherwise only push the session back to clear text.
            self._tls_context = ssl.create_default_context()
            self._tls_context.check_hostname = False
            self._tls_context.verify_mode = ssl.CERT_NONE

    async def deliver(self, envelope_from: str, recipient: str, message: bytes) -> DeliveryResult:
        """Offer one message for one recipient; the result is never an exception."""
        if self._relay is not None:
            hosts = [self._relay]
        else:
            domain = recipient.rpartition("@")[2]
            try:
                hosts = await self._lookup(domain)
            except _PermanentDns as exc:
                return rejected(str(exc))
            except _TemporaryDns as exc:
                return deferred(str(exc))
        result = deferred("no mail host to try")
        for host in hosts:
            result, connected = await self._deliver_to(host, envelope_from, recipient, message)
            if connected:
                return result
        return result

    async def _deliver_to(
        self, host: tuple[str, int], envelope_from: str, recipient: str, message: bytes
    ) -> tuple[DeliveryResult, bool]:
        pool = self._pools.get(host)
        if pool is None:
            pool = self._pools[host] = _HostPool(self._per_host)
        async with pool.slots:
            # A reused connection may have been closed by the server meanwhile: then try a fresh one.
            for attempt in range(2):
                conn = self._take_idle(pool) if attempt == 0 else None
                reused = conn is not None
                if conn is None:
                    try:
                        conn = await self._connect(host)
                    except _TlsUnavailable:
                        return deferred(
                            f"{host[0]} does not offer STARTTLS and SENDER_TLS=required; not sending in clear"
                        ), False
                    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
                        return deferred(f"could not connect to {host[0]}:{host[1]}: {_describe(exc)}"), False
                result, keep, retryable = await self._transaction(conn, envelope_from, recipient, message)
                if keep and not self._closed:
                    conn.used += 1
                    conn.last_used = time.monotonic()
                    if conn.used < _MESSAGES_PER_CONNECTION:
                        pool.idle.append(conn)
                    else:
                        await _quit(conn)
                else:
                    conn.close()
                if reused and retryable:
                    continue
                return result, True
        return result, True

    def _take_idle(self, pool: _HostPool) -> _Session | None:
        now = time.monotonic()
        while pool.idle:
            conn = pool.idle.pop()
            if now - conn.last_used < _IDLE_SECONDS and conn.is_connected:
                return conn
            conn.close()
        return None

    async def _connect(self, host: tuple[str, int]) -> _Session:
        smtp = aiosmtplib.SMTP(
            hostname=host[0],
            port=host[1],
            timeout=self._timeout,
            start_tls=False,
            local_hostname=self._ehlo_name,
            tls_context=self._tls_context,
        )
        await smtp.connect()
        try:
            await smtp.ehlo()
            tls = smtp.supports_extension("starttls")
            if tls:
                await smtp.starttls(tls_context=self._tls_context)
                await smtp.ehlo()
            elif self._tls_required:
                raise _TlsUnavailable()
            if smtp.transport is None or not smtp.is_connected:
                raise aiosmtplib.SMTPServerDisconnected("connection lost after EHLO")
            return _Session(smtp.transport, tls=tls, pipelining=smtp.supports_extension("pipelining"))
        except BaseException:
            smtp.close()
            raise

    async def _transaction(
        self, conn: _Session, envelope_from: str, recipient: str, message: bytes
    ) -> tuple[DeliveryResult, bool, bool]:
        """One MAIL/RCPT/DATA exchange, the three commands in one write when the server pipelines.

        Returns the result, whether the connection is fit to reuse, and whether the message may be offered
        again on a fresh connection: only when the session broke before the message was sent, since after
        it the server may have accepted the message and a second offer would be a second copy.
        """
        if _UNSAFE_ADDRESS.search(envelope_from) or _UNSAFE_ADDRESS.search(recipient):
            return rejected("an envelope address contains a line break, space or control character"), True, False
        loop = asyncio.get_running_loop()
        before_data = True
        mail = b"MAIL FROM:<" + envelope_from.encode() + b">\r\n"
        rcpt = b"RCPT TO:<" + recipient.encode() + b">\r\n"
        try:
            # One timer moved before each reply, rather than a task and a timer per reply.
            async with asyncio.timeout(self._timeout) as deadline:
                if conn.pipelining:
                    conn.write(mail + rcpt + b"DATA\r\n")
                    replies = [await conn.reply(), await conn.reply(), await conn.reply()]
                    deadline.reschedule(loop.time() + self._timeout)
                    refused = next((r for r in replies[:2] if r.code not in (250, 251)), None)
                    if refused is not None:
                        if replies[2].code == 354:
                            # RFC 2920 3.1: DATA accepted although no recipient was: end it with an empty message.
                            conn.write(b".\r\n")
                            await conn.reply()
                        return await _refusal(conn, refused)
                    start = replies[2]
                else:
                    for command in (mail, rcpt):
                        conn.write(command)
                        reply = await conn.reply()
                        deadline.reschedule(loop.time() + self._timeout)
                        if reply.code not in (250, 251):
                            return await _refusal(conn, reply)
                    conn.write(b"DATA\r\n")
                    start = await conn.reply()
                    deadline.reschedule(loop.time() + self._timeout)
                if start.code != 354:
                    return await _refusal(conn, start)
                before_data = False
                conn.write(data_payload(message))
                await conn.drain()
                reply = await conn.reply()
                if reply.code != 250:
                    return await _refusal(conn, reply)
                return reply_result(reply.code, reply.message, conn.tls), True, False
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            result = deferred(f"connection failed during the SMTP session: {_describe(exc)}", conn.tls)
            return result, False, before_data

    async def close(self) -> None:
        """Say QUIT on every idle connection and forget them."""
        self._closed = True
        conns = [conn for pool in self._pools.values() for conn in pool.idle]
        for pool in self._pools.values():
            pool.idle.clear()
        await asyncio.gather(*(_quit(conn) for conn in conns), return_exceptions=True)


def data_payload(message: bytes) -> bytes:
    """The DATA payload of a message: CRLF line ends, leading dots doubled, ended by CRLF . CRLF.

    A message composed here (CrlfMessage) has CRLF line ends already, and the dot-stuffing is one
    bytes.replace instead of aiosmtplib's two regular-expression passes; anything else is normalised first.
    """
    if type(message) is not CrlfMessage:
        crlf = message.count(b"\r\n")
        if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
            message = normalize_message_line_endings(message)
    if message.startswith(b"."):
        message = b"." + message
    if b"\r\n." in message:
        message = message.replace(b"\r\n.", b"\r\n..")
    if not message.endswith(b"\r\n"):
        return b"".join((message, b"\r\n.\r\n"))
    return b"".join((message, b".\r\n"))


async def _refusal(conn: _Session, reply: aiosmtplib.SMTPResponse) -> tuple[DeliveryResult, bool, bool]:
    """The result of a refused command, the session reset for the next message; never offered again."""
    return reply_result(reply.code, reply.message, conn.tls), await _reset(conn, reply.code), False


async def _reset(conn: _Session, code: int) -> bool:
    """RSET after a refused transaction so the next message starts clean; False if the session is done."""
    if code == 421:
        return False
    try:
        conn.write(b"RSET\r\n")
        reply = await conn.reply()
    except (aiosmtplib.SMTPException, OSError):
        return False
    return reply.code == 250


async def _quit(conn: _Session) -> None:
    try:
        conn.write(b"QUIT\r\n")
        await asyncio.wait_for(conn.reply(), timeout=5.0)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
