"""A development SMTP catcher (aiosmtpd with STARTTLS) that keeps every message it accepts.

`make run` points the senders at it so no development mail leaves the machine; the tests use the same
class as their SMTP sink, with replies programmed per recipient.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from dev.embedded import free_port

# Given (recipient address, how many times it was offered before), return an SMTP reply such as
# "450 4.2.0 try later" to refuse it, or None to accept it.
RecipientReply = Callable[[str, int], str | None]


@dataclass
class CaughtMessage:
    """One accepted message as the receiving server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    tls_version: str | None
    received_at: float = field(default_factory=time.time)


class _Handler:
    def __init__(self, catcher: SmtpCatcher) -> None:
        self.catcher = catcher

    async def handle_RCPT(self, server, session: Session, envelope: Envelope, address: str, options):
        reply = self.catcher._reply_for(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session: Session, envelope: Envelope):
        # After STARTTLS aiosmtpd keeps the TLS transport's extra info on the session.
        extra = session.ssl or {}
        ssl_object = extra.get("ssl_object")
        tls_version = ssl_object.version() if ssl_object is not None else None
        message = CaughtMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or envelope.content or b""),
            tls=session.ssl is not None,
            tls_version=tls_version,
        )
        self.catcher._keep(message)
        return "250 Message accepted for delivery"


class _Controller(Controller):
    def __init__(self, handler: _Handler, tls_context: ssl.SSLContext, require_starttls: bool, **kw) -> None:
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        super().__init__(handler, **kw)

    def factory(self) -> SMTP:
        return SMTP(
            self.handler,
            hostname="mailblast-catcher.localhost",
            tls_context=self._tls_context,
            require_starttls=self._require_starttls,
            data_size_limit=64 * 1024 * 1024,
            enable_SMTPUTF8=True,
        )


class SmtpCatcher:
    """An SMTP server on 127.0.0.1 offering STARTTLS; keeps messages in memory and, if asked, on disk."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        port: int | None = None,
        require_starttls: bool = False,
        store_dir: Path | None = None,
        keep_in_memory: bool = True,
    ) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        self.port = port or free_port()
        self.store_dir = store_dir
        self.keep_in_memory = keep_in_memory
        self.count = 0
        self.messages: list[CaughtMessage] = []
        self.reply: RecipientReply | None = None
        self._offers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._controller = _Controller(_Handler(self), context, require_starttls, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        """Start listening (in a thread of its own)."""
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        self._controller.start()

    def stop(self) -> None:
        """Stop listening."""
        self._controller.stop()

    def _reply_for(self, address: str) -> str | None:
        with self._lock:
            seen = self._offers.get(address, 0)
            self._offers[address] = seen + 1
        return self.reply(address, seen) if self.reply else None

    def _keep(self, message: CaughtMessage) -> None:
        with self._lock:
            self.count += 1
            index = self.count
            if self.keep_in_memory:
                self.messages.append(message)
        if self.store_dir is not None:
            stem = self.store_dir / f"{int(message.received_at * 1000)}-{index:07d}"
            stem.with_suffix(".eml").write_bytes(message.data)
            meta = {
                "mail_from": message.mail_from,
                "rcpt_tos": message.rcpt_tos,
                "tls": message.tls,
                "tls_version": message.tls_version,
                "received_at": message.received_at,
            }
            stem.with_suffix(".json").write_text(json.dumps(meta))

    def received_by(self) -> dict[str, list[CaughtMessage]]:
        """Messages grouped by recipient address."""
        out: dict[str, list[CaughtMessage]] = {}
        with self._lock:
            for message in self.messages:
                for rcpt in message.rcpt_tos:
                    out.setdefault(rcpt, []).append(message)
        return out

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[CaughtMessage]:
        """Wait until at least `count` messages arrived (polling with a deadline), else fail saying how many."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = len(self.messages)
            if got >= count:
                return list(self.messages)
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} messages, {got} arrived within {timeout:.0f}s")
            await asyncio.sleep(0.05)


def main() -> None:
    """Run a catcher on its own (benchmarks use it as a sink in a process of its own)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="SMTP catcher with STARTTLS")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--store-dir", type=Path)
    parser.add_argument("--count-file", type=Path, help="write the number of messages received here")
    args = parser.parse_args()
    catcher = SmtpCatcher(args.cert, args.key, args.port, store_dir=args.store_dir, keep_in_memory=False)
    catcher.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"catcher listening on 127.0.0.1:{catcher.port}", flush=True)
    while not stop.wait(0.2):
        if args.count_file:
            args.count_file.write_text(str(catcher.count))
    catcher.stop()


if __name__ == "__main__":
    main()
