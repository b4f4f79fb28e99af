"""A STARTTLS SMTP sink that costs almost nothing, so a benchmark measures the sender and not the sink.

aiosmtpd (the development catcher) runs a coroutine per command line and copies every DATA line; under
a benchmark it took about as much CPU as the senders. This sink is one asyncio Protocol per connection on
uvloop: it answers EHLO, STARTTLS, MAIL, RCPT, DATA, RSET, NOOP and QUIT, accepts pipelined commands
(RFC 2920), finds the end of DATA with one bytes.find per chunk and counts. Every `--sample-every`-th
message is kept in `--samples` so the benchmark can verify its DKIM signatures.

Run: python -m bench.sink --port P --cert C --key K [--samples DIR]. SIGTERM ends it; it prints
"accepted N" and its own CPU seconds on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import ssl
from pathlib import Path

try:
    import uvloop
except ImportError:  # the sink still works on the default loop, only slower
    uvloop = None

_EHLO = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 52428800\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n"
_EHLO_TLS = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 52428800\r\n250 SMTPUTF8\r\n"
_END = b"\r\n.\r\n"


class Counts:
    """What the sink accepted, for the whole process."""

    def __init__(self, samples: Path | None, every: int, refusals: dict[bytes, bytes] | None = None) -> None:
        self.accepted = 0
        self.connections = 0
        # Chunks that brought MAIL, RCPT and DATA at once: the client pipelines (RFC 2920).
        self.pipelined = 0
        self.samples = samples
        self.every = every
        # Replies to RCPT for some addresses, e.g. {b"x@example.net": b"550 5.1.1 no such user"} (tests).
        self.refusals = refusals or {}


class SinkProtocol(asyncio.Protocol):
    """One SMTP session: commands in, replies out, DATA counted and dropped."""

    def __init__(self, context: ssl.SSLContext, counts: Counts) -> None:
        self._context = context
        self._counts = counts
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._in_data = False
        self._tail = b""
        self._tls = False
        self._starting_tls = False
        self._keep: list[bytes] | None = None
        self._recipients = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Greet."""
        self._transport = transport  # type: ignore[assignment]
        self._counts.connections += 1
        transport.write(b"220 sink ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        """Answer every complete command line; in DATA look for the terminating dot only."""
        if self._starting_tls:
            # Decrypted before start_tls has handed over the TLS transport: answered once it has.
            self._buffer += data
            return
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        replies: list[bytes] = []
        start = 0
        if buffer.startswith(b"MAIL") and b"\r\nDATA\r\n" in buffer:
            self._counts.pipelined += 1
        while start < len(buffer):
            if self._in_data:
                chunk = buffer[start:] if start else buffer
                # The dot line may straddle chunks: search the last bytes seen before this chunk too.
                search = self._tail + chunk
                end = search.find(_END)
                if end < 0:
                    if self._keep is not None:
                        self._keep.append(chunk)
                    self._tail = search[-4:]
                    start = len(buffer)
                    break
                used = end + 5 - len(self._tail)
                if self._keep is not None:
                    self._keep.append(chunk[:used])
                    self._save(b"".join(self._keep)[:-3])
                    self._keep = None
                self._in_data = False
                self._counts.accepted += 1
                replies.append(b"250 2.0.0 accepted\r\n")
                start += used
                continue
            end = buffer.find(b"\r\n", start)
            if end < 0:
                self._buffer = buffer[start:]
                break
            line = buffer[start:end]
            verb = line[:4].upper()
            start = end + 2
            if verb == b"RCPT":
                address = line.partition(b"<")[2].partition(b">")[0]
                refusal = self._counts.refusals.get(address)
                if refusal is None:
                    self._recipients += 1
                replies.append(refusal + b"\r\n" if refusal is not None else b"250 2.1.5 ok\r\n")
            elif verb in (b"MAIL", b"RSET", b"NOOP"):
                self._recipients = 0
                replies.append(b"250 2.1.0 ok\r\n")
            elif verb == b"DATA" and not self._recipients:
                replies.append(b"554 5.5.1 no valid recipients\r\n")
            elif verb == b"DATA":
                self._recipients = 0
                self._in_data = True
                # As if the DATA line's own CRLF began the message: a message of "." alone ends at once.
                self._tail = b"\r\n"
                if self._counts.samples is not None and self._counts.accepted % self._counts.every == 0:
                    self._keep = []
                replies.append(b"354 go ahead\r\n")
            elif verb in (b"EHLO", b"HELO"):
                replies.append(_EHLO_TLS if self._tls else _EHLO)
            elif verb == b"STAR" and not self._tls:
                # The client says nothing more until the handshake, so nothing after this line is lost.
                self._transport.write(b"".join(replies) + b"220 2.0.0 ready\r\n")  # type: ignore[union-attr]
                # The ClientHello must wait in the socket for the TLS layer, not reach this protocol.
                self._transport.pause_reading()  # type: ignore[union-attr]
                self._starting_tls = True
                asyncio.get_running_loop().create_task(self._start_tls())
                return
            elif verb == b"QUIT":
                self._transport.write(b"".join(replies) + b"221 2.0.0 bye\r\n")  # type: ignore[union-attr]
                self._transport.close()  # type: ignore[union-attr]
                return
            else:
                replies.append(b"502 5.5.2 not implemented\r\n")
        if replies:
            self._transport.write(b"".join(replies))  # type: ignore[union-attr]

    def _save(self, message: bytes) -> None:
        if self._counts.samples is not None:
            # Undo the dot-stuffing, as a receiving MTA does.
            message = message.replace(b"\r\n..", b"\r\n.")
            (self._counts.samples / f"{self._counts.accepted:08d}.eml").write_bytes(message)

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self._transport, self, self._context, server_side=True)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError):
            self._transport.close()  # type: ignore[union-attr]
            return
        self._transport = transport  # type: ignore[assignment]
        self._tls = True
        self._starting_tls = False
        if self._buffer:
            self.data_received(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the session."""
        self._transport = None


async def start_sink(port: int, cert: str, key: str, counts: Counts) -> asyncio.Server:
    """Listen on 127.0.0.1:port (0: any free port) on the running loop."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SinkProtocol(context, counts), "127.0.0.1", port, backlog=512)


async def serve(port: int, cert: str, key: str, samples: Path | None, every: int) -> Counts:
    """Serve until SIGTERM or SIGINT; return the counts."""
    counts = Counts(samples, every)
    loop = asyncio.get_running_loop()
    server = await start_sink(port, cert, key, counts)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    return counts


def main() -> None:
    """Parse the arguments, serve, and print what was accepted and what it cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--samples", type=Path, help="keep every --sample-every-th message here")
    parser.add_argument("--sample-every", type=int, default=1000)
    args = parser.parse_args()
    if args.samples is not None:
        args.samples.mkdir(parents=True, exist_ok=True)
    run = uvloop.run if uvloop is not None else asyncio.run
    counts = run(serve(args.port, args.cert, args.key, args.samples, args.sample_every))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"accepted {counts.accepted} connections {counts.connections} "
        f"cpu {usage.ru_utime + usage.ru_stime:.3f} loop {'uvloop' if uvloop else 'asyncio'} pid {os.getpid()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
