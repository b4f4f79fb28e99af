"""Delivery over SMTP: MX or relay, STARTTLS, pooled connections, and the three outcomes of a send."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver
from aiosmtplib.protocol import normalize_message_line_endings

from services.common.log import get_logger
from services.common.nameserver import nameserver_resolver
from services.sender.ledger import DeliveryResult, deferred, rejected, reply_result

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


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    tls: bool
    used: int = 0
    last_used: float = 0.0

    def close(self) -> None:
        self.smtp.close()


class _HostPool:
    """Idle connections to one host:port, and a bound on how many are open at once."""

    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.idle: deque[_Connection] = deque()


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

    def _take_idle(self, pool: _HostPool) -> _Connection | None:
        now = time.monotonic()
        while pool.idle:
            conn = pool.idle.pop()
            if now - conn.last_used < _IDLE_SECONDS and conn.smtp.is_connected:
                return conn
            conn.close()
        return None

    async def _connect(self, host: tuple[str, int]) -> _Connection:
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
            if smtp.supports_extension("starttls"):
                await smtp.starttls(tls_context=self._tls_context)
                await smtp.ehlo()
                return _Connection(smtp, tls=True)
            if self._tls_required:
                raise _TlsUnavailable()
            return _Connection(smtp, tls=False)
        except BaseException:
            smtp.close()
            raise

    async def _transaction(
        self, conn: _Connection, envelope_from: str, recipient: str, message: bytes
    ) -> tuple[DeliveryResult, bool, bool]:
        """One MAIL/RCPT/DATA exchange.

        Returns the result, whether the connection is fit to reuse, and whether the message may be offered
        again on a fresh connection: only when the session broke before DATA, since after it the server may
        have accepted the message and a second offer would be a second copy.
        """
        smtp = conn.smtp
        loop = asyncio.get_running_loop()
        before_data = True
        try:
            protocol = smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost")
            # One timer moved before each command, rather than aiosmtplib's wait_for per reply (a task
            # and a timer each); the protocol's own execute_command, as EHLO already did the checks.
            async with asyncio.timeout(self._timeout) as deadline:
                reply = await protocol.execute_command(b"MAIL", b"FROM:<" + envelope_from.encode() + b">")
                if reply.code != 250:
                    return reply_result(reply.code, reply.message, conn.tls), await _reset(conn, reply.code), False
                deadline.reschedule(loop.time() + self._timeout)
                reply = await protocol.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
                if reply.code not in (250, 251):
                    return reply_result(reply.code, reply.message, conn.tls), await _reset(conn, reply.code), False
                deadline.reschedule(loop.time() + self._timeout)
                before_data = False
                try:
                    reply = await _data(smtp, message, lambda: deadline.reschedule(loop.time() + self._timeout))
                except aiosmtplib.SMTPResponseException as exc:
                    return reply_result(exc.code, exc.message, conn.tls), await _reset(conn, exc.code), False
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

    Our messages are CRLF-normalised when built, so the dot-stuffing is one bytes.replace instead of
    aiosmtplib's two regular-expression passes; anything else is normalised first.
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = normalize_message_line_endings(message)
    if message.startswith(b"."):
        message = b"." + message
    message = message.replace(b"\r\n.", b"\r\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


async def _data(smtp: aiosmtplib.SMTP, message: bytes, restart_timer: Callable[[], None]) -> aiosmtplib.SMTPResponse:
    """DATA with our own payload preparation, on aiosmtplib's protocol (as its execute_data_command);
    the caller's timer bounds each reply, restarted once the 354 has come."""
    protocol = smtp.protocol
    lock = getattr(protocol, "_command_lock", None)
    if protocol is None or lock is None:
        return await smtp.data(message)
    payload = data_payload(message)
    async with lock:
        protocol.write(b"DATA\r\n")
        start = await protocol.read_response()
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        restart_timer()
        protocol.write(payload)
        reply = await protocol.read_response()
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return reply


async def _reset(conn: _Connection, code: int) -> bool:
    """RSET after a refused transaction so the next message starts clean; False if the session is done."""
    if code == 421:
        return False
    try:
        reply = await conn.smtp.rset()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return False
    return reply.code == 250


async def _quit(conn: _Connection) -> None:
    try:
        await asyncio.wait_for(conn.smtp.quit(), timeout=5.0)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
