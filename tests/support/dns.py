"""An authoritative DNS server on loopback for tests: dnslib's server over UDP and TCP on one free port.

The test defines the zones and changes their records while the server runs. Answers follow what an
authoritative server does: NXDOMAIN for a name that does not exist, NODATA (NOERROR, no answer, the SOA
in the authority section) for a name that exists without the asked type, CNAMEs followed inside the
served zones, REFUSED outside them, and over UDP a reply larger than the client's limit (512 bytes, or
its EDNS payload size) truncated with TC set so the client asks again over TCP.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, TXT, DNSHeader, DNSLabel, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer

# Where a CNAME chain inside the served zones stops being followed (a loop, or a test's mistake).
_MAX_CNAME_CHAIN = 8
_PLAIN_UDP_LIMIT = 512
_MAX_UDP_LIMIT = 4096


@dataclass(frozen=True)
class Query:
    """One question the server was asked: the name, the type, and 'udp' or 'tcp'."""

    name: str
    rtype: str
    protocol: str


def absolute(name: str | bytes) -> str:
    """A domain name in the form the server keeps it: lower case, with the final dot."""
    text = name.decode() if isinstance(name, bytes) else name
    return text.lower().rstrip(".") + "."


def txt_strings(text: str | bytes) -> list[bytes]:
    """A TXT value split into character-strings of at most 255 bytes, as zone files publish long records."""
    data = text.encode() if isinstance(text, str) else text
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


class _Handler(DNSHandler):
    """dnslib's handler, with truncation as a real server does it: the question kept, TC set."""

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        if reply is None:
            raise _Dropped()
        packed = reply.pack()
        if self.protocol == "udp":
            limit = self.server.resolver.udp_limit(request)
            if len(packed) > limit:
                truncated = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=request.q)
                packed = truncated.pack()
        return packed

    def handle(self) -> None:
        try:
            super().handle()
        except _Dropped:
            pass


class _Dropped(Exception):
    """The zone says this name is never answered (a timeout for the client)."""


class _QuietLogger(DNSLogger):
    """Keeps undecodable requests for the test to look at instead of printing every query."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(log="error", prefix=False, logf=errors.append)


class DnsServer:
    """An authoritative server for the zones a test adds, on 127.0.0.1 over UDP and TCP (one port).

    `address` ("127.0.0.1:port") is what SENDER_DNS_RESOLVER takes; `host` and `port` what a resolver
    library takes. Records are given in zone-file syntax (`add("example.net", "MX", "10 mx.example.net.")`),
    TXT values as text, split into 255-byte strings (`add_txt`). `queries` lists what was asked.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.queries: list[Query] = []
        self.errors: list[str] = []
        # Lower than the client's own limit to force TCP for smaller answers; None: the client's limit.
        self.max_udp_size: int | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._zones: dict[str, int] = {}
        self._records: dict[str, list[RR]] = {}
        self._servfail: set[str] = set()
        self._delays: dict[str, float] = {}
        self._servers: list[DNSServer] = []

    @property
    def address(self) -> str:
        """host:port, the form of SENDER_DNS_RESOLVER."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Listen on a port free for both UDP and TCP, answering from background threads."""
        for _ in range(20):
            udp = DNSServer(self, address=self.host, port=0, handler=_Handler, logger=_QuietLogger(self.errors))
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    self, address=self.host, port=port, handler=_Handler, logger=_QuietLogger(self.errors), tcp=True
                )
            except OSError:
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                # A short poll interval, so stop() (socketserver's shutdown) returns at once.
                threading.Thread(target=server.server.serve_forever, args=(0.05,), daemon=True).start()
            return
        raise OSError(f"no port on {self.host} was free for both UDP and TCP")

    def stop(self) -> None:
        """Stop answering and close both sockets; a delayed answer still pending is dropped."""
        self._stopping.set()
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []

    # Zones and records

    def add_zone(self, origin: str, ttl: int = 300) -> None:
        """Serve a zone: its apex gets an SOA and an NS record (ns.<origin>, with an A record 127.0.0.1)."""
        apex = absolute(origin)
        with self._lock:
            self._zones[apex] = ttl
        self.replace(apex, "SOA", f"ns.{apex} hostmaster.{apex} 1 3600 600 86400 {ttl}", ttl=ttl)
        self.replace(apex, "NS", f"ns.{apex}", ttl=ttl)
        self.replace(f"ns.{apex}", "A", self.host, ttl=ttl)

    def add(self, name: str | bytes, rtype: str, value: str, ttl: int = 300) -> None:
        """Add one record, its data in zone-file syntax ("10 mx.example.net.", "0 ." for a null MX)."""
        owner = absolute(name)
        self._zone_of(owner)
        records = RR.fromZone(f"{owner} {ttl} IN {rtype.upper()} {value}")
        with self._lock:
            self._records.setdefault(owner, []).extend(records)

    def add_txt(self, name: str | bytes, text: str | bytes, ttl: int = 300) -> None:
        """Add a TXT record, split into 255-byte strings as a zone file holds a long DKIM key."""
        owner = absolute(name)
        self._zone_of(owner)
        record = RR(owner, QTYPE.TXT, CLASS.IN, ttl, TXT(txt_strings(text)))
        with self._lock:
            self._records.setdefault(owner, []).append(record)

    def remove(self, name: str | bytes, rtype: str | None = None) -> None:
        """Remove the name's records of one type, or all of them (the name then no longer exists)."""
        owner = absolute(name)
        with self._lock:
            kept = [rr for rr in self._records.get(owner, []) if rtype is not None and rr.rtype != _qtype(rtype)]
            if kept:
                self._records[owner] = kept
            else:
                self._records.pop(owner, None)

    def replace(self, name: str | bytes, rtype: str, *values: str, ttl: int = 300) -> None:
        """Replace the name's records of one type with these, in zone-file syntax."""
        self.remove(name, rtype)
        for value in values:
            self.add(name, rtype, value, ttl=ttl)

    # Failures

    def fail(self, name: str | bytes) -> None:
        """Answer SERVFAIL for this name, whatever is asked (a broken authoritative server)."""
        with self._lock:
            self._servfail.add(absolute(name))

    def delay(self, name: str | bytes, seconds: float | None) -> None:
        """Hold answers for this name for `seconds` (None: never answer, a timeout for the client)."""
        with self._lock:
            self._delays[absolute(name)] = float("inf") if seconds is None else seconds

    def heal(self, name: str | bytes) -> None:
        """Answer for this name normally again."""
        owner = absolute(name)
        with self._lock:
            self._servfail.discard(owner)
            self._delays.pop(owner, None)

    # dnslib's resolver interface

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord | None:
        """The authoritative answer to one request (dnslib calls this from its server threads)."""
        qname = absolute(str(request.q.qname))
        qtype = request.q.qtype
        with self._lock:
            self.queries.append(Query(qname, QTYPE.get(qtype, str(qtype)), handler.protocol))
            delay = self._delays.get(qname, 0.0)
            servfail = qname in self._servfail
        if delay:
            # Held, not slept: stopping the server releases the answer at once (and drops it).
            self._stopping.wait(None if delay == float("inf") else delay)
            if delay == float("inf") or self._stopping.is_set():
                return None
        reply = request.reply(ra=0, aa=1)
        if any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=_MAX_UDP_LIMIT))
        if servfail:
            reply.header.aa = 0
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        with self._lock:
            self._answer(reply, qname, qtype)
        return reply

    def udp_limit(self, request: DNSRecord) -> int:
        """The largest UDP reply this client takes: its EDNS payload size, else 512; capped by max_udp_size."""
        limit = _PLAIN_UDP_LIMIT
        for rr in request.ar:
            if rr.rtype == QTYPE.OPT:
                limit = max(_PLAIN_UDP_LIMIT, min(rr.rclass, _MAX_UDP_LIMIT))
        return min(limit, self.max_udp_size) if self.max_udp_size else limit

    def _answer(self, reply: DNSRecord, qname: str, qtype: int) -> None:
        zone = self._zone_of(qname, strict=False)
        if zone is None:
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return
        name = qname
        for _ in range(_MAX_CNAME_CHAIN):
            records = self._records.get(name, [])
            cnames = [rr for rr in records if rr.rtype == QTYPE.CNAME]
            if cnames and qtype != QTYPE.CNAME:
                reply.add_answer(*cnames)
                name = absolute(str(cnames[0].rdata.label))
                zone = self._zone_of(name, strict=False)
                if zone is None:
                    return
                continue
            matching = [rr for rr in records if qtype == QTYPE.ANY or rr.rtype == qtype]
            if matching:
                reply.add_answer(*matching)
                return
            if not records and not self._has_children(name):
                reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(*self._soa(zone))
            return

    def _soa(self, zone: str) -> list[RR]:
        return [rr for rr in self._records.get(zone, []) if rr.rtype == QTYPE.SOA]

    def _has_children(self, name: str) -> bool:
        # An empty non-terminal (e.g. _domainkey.example.com under a selector) exists: NODATA, not NXDOMAIN.
        return any(owner.endswith("." + name) for owner in self._records)

    def _zone_of(self, name: str, strict: bool = True) -> str | None:
        label = DNSLabel(name)
        best = None
        for zone in self._zones:
            if label.matchSuffix(zone) and (best is None or len(zone) > len(best)):
                best = zone
        if best is None and strict:
            raise ValueError(f"{name} is in none of the served zones {sorted(self._zones)}: add_zone() first")
        return best


def _qtype(rtype: str) -> int:
    return getattr(QTYPE, rtype.upper())
