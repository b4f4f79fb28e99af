"""DKIM signatures checked by verifiers independent of dkimpy, with the keys from the loopback DNS server.

rsa-sha256: Debian's Mail::DKIM (libmail-dkim-perl), through `mail_dkim_verify.pl`, its Net::DNS resolver
pointed at the test's server. ed25519-sha256: OpenDKIM's library (libopendkim11) through ctypes; Mail::DKIM
in Debian 12 verifies no ed25519. OpenDKIM's own resolver is glibc's res_nquery, which always asks the
nameservers of /etc/resolv.conf on port 53 (`dkim_dns_nslist` does nothing on glibc, and takes no port), so
its query hooks (`dkim_dns_set_query_start`, `..._waitreply`, `..._cancel`) are set here: each key lookup
is sent to the test's server as a real query (UDP, TCP when truncated) and the reply's wire form is handed
to the library, which parses it itself exactly as one from its own resolver. A query file
(DKIM_QUERY_FILE) would skip DNS altogether, and NXDOMAIN, NODATA, truncation and SERVFAIL with it.
dkimpy, the product's own library, is checked against the same server for comparison.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import itertools
import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from tests.support.dns import DnsServer

MAIL_DKIM_SCRIPT = Path(__file__).with_name("mail_dkim_verify.pl")
RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"


# What a message signed with both keys gets: a pass from dkimpy and from the independent verifier of each.
EVERY_VERIFIER = frozenset({("dkimpy", RSA), ("dkimpy", ED25519), ("Mail::DKIM", RSA), ("OpenDKIM", ED25519)})


def passing(checks: Sequence[SignatureCheck]) -> set[tuple[str, str]]:
    """The (verifier, algorithm) pairs of the checks that passed."""
    return {(check.verifier, check.algorithm) for check in checks if check.passed}


@dataclass(frozen=True)
class SignatureCheck:
    """One verifier's verdict on one DKIM-Signature: passed or not, and the verifier's reason."""

    verifier: str
    algorithm: str
    domain: str
    selector: str
    passed: bool
    reason: str


# Mail::DKIM (rsa-sha256)


def mail_dkim(message: bytes, dns_server: DnsServer) -> list[SignatureCheck]:
    """Every signature of the message as Debian's Mail::DKIM::Verifier judges it."""
    return mail_dkim_many([message], dns_server)[0]


def mail_dkim_many(messages: Sequence[bytes], dns_server: DnsServer) -> list[list[SignatureCheck]]:
    """mail_dkim for many messages in one perl process (a campaign's worth, without a process each)."""
    stdin = b"".join(b"%d\n" % len(message) + message for message in messages)
    done = subprocess.run(
        ["perl", str(MAIL_DKIM_SCRIPT), dns_server.host, str(dns_server.port)],
        input=stdin,
        capture_output=True,
        timeout=60 + len(messages),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"Mail::DKIM verifier failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    lines = done.stdout.decode().splitlines()
    if len(lines) != len(messages):
        raise RuntimeError(f"Mail::DKIM answered {len(lines)} of {len(messages)} messages: {done.stderr.decode()}")
    return [
        [
            SignatureCheck(
                verifier="Mail::DKIM",
                algorithm=sig["algorithm"],
                domain=sig["domain"],
                selector=sig["selector"],
                passed=sig["result"] == "pass",
                reason=sig["detail"] or sig["result"],
            )
            for sig in json.loads(line)
        ]
        for line in lines
    ]


# OpenDKIM (ed25519-sha256)

_DKIM_STAT_OK = 0
_DKIM_DNS_SUCCESS = 0
_DKIM_DNS_ERROR = -1
_DKIM_SIGFLAG_PROCESSED = 0x02
_DKIM_SIGFLAG_PASSED = 0x04
_DKIM_SIGBH_MATCH = 0
_DKIM_SIGBH_MISMATCH = 1
_ALGORITHMS = {0: "rsa-sha1", 1: RSA, 2: ED25519}

_QueryStart = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_ubyte),
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)
_QueryWait = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_size_t),
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_int),
)
_QueryCancel = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_ResolverInit = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))
_ResolverClose = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _libopendkim() -> ctypes.CDLL:
    path = ctypes.util.find_library("opendkim") or "libopendkim.so.11"
    lib = ctypes.CDLL(path)
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures = {
        "dkim_init": (p, [p, p]),
        "dkim_close": (None, [p]),
        "dkim_verify": (p, [p, s, p, ctypes.POINTER(i)]),
        "dkim_chunk": (i, [p, p, ctypes.c_size_t]),
        "dkim_eom": (i, [p, ctypes.POINTER(ctypes.c_bool)]),
        "dkim_free": (i, [p]),
        "dkim_geterror": (s, [p]),
        "dkim_getresultstr": (s, [i]),
        "dkim_getsiglist": (i, [p, ctypes.POINTER(ctypes.POINTER(p)), ctypes.POINTER(i)]),
        "dkim_sig_getflags": (ctypes.c_uint, [p]),
        "dkim_sig_getbh": (i, [p]),
        "dkim_sig_geterror": (i, [p]),
        "dkim_sig_geterrorstr": (s, [i]),
        "dkim_sig_getsignalg": (i, [p, ctypes.POINTER(i)]),
        "dkim_sig_getdomain": (s, [p]),
        "dkim_sig_getselector": (s, [p]),
        "dkim_dns_set_query_service": (p, [p, p]),
        "dkim_dns_set_query_start": (None, [p, _QueryStart]),
        "dkim_dns_set_query_waitreply": (None, [p, _QueryWait]),
        "dkim_dns_set_query_cancel": (None, [p, _QueryCancel]),
        "dkim_dns_set_init": (None, [p, _ResolverInit]),
        "dkim_dns_set_close": (None, [p, _ResolverClose]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


class _LoopbackKeyLookup:
    """OpenDKIM's DNS query hooks, answered by real queries to the test's server (UDP, then TCP if truncated)."""

    def __init__(self, dns_server: DnsServer) -> None:
        self._server = dns_server
        self._handles = itertools.count(1)
        self._replies: dict[int, tuple[int, int]] = {}
        # Kept referenced for as long as the library may call them.
        self.start = _QueryStart(self._start)
        self.wait = _QueryWait(self._wait)
        self.cancel = _QueryCancel(self._cancel)
        self.init = _ResolverInit(lambda _service: 0)
        self.close = _ResolverClose(lambda _service: None)

    def install(self, lib: ctypes.CDLL, handle: int) -> None:
        """Make this the library instance's resolver."""
        lib.dkim_dns_set_init(handle, self.init)
        lib.dkim_dns_set_close(handle, self.close)
        lib.dkim_dns_set_query_start(handle, self.start)
        lib.dkim_dns_set_query_waitreply(handle, self.wait)
        lib.dkim_dns_set_query_cancel(handle, self.cancel)

    def _start(self, _service, rtype, qname, buf, buflen, qh) -> int:
        query = dns.message.make_query(qname.decode(), dns.rdatatype.RdataType.make(rtype))
        try:
            reply, _tcp = dns.query.udp_with_fallback(query, self._server.host, port=self._server.port, timeout=5)
        except (dns.exception.DNSException, OSError):
            return _DKIM_DNS_ERROR
        if reply.rcode() == dns.rcode.SERVFAIL:
            # As the library's own resolver (res_nquery) reports it: a failed query, not a missing key.
            return _DKIM_DNS_ERROR
        wire = reply.to_wire()
        if len(wire) > buflen:
            return _DKIM_DNS_ERROR
        ctypes.memmove(buf, wire, len(wire))
        handle = next(self._handles)
        self._replies[handle] = (len(wire), 0)
        qh[0] = handle
        return _DKIM_DNS_SUCCESS

    def _wait(self, _service, qh, _timeout, nbytes, error, dnssec) -> int:
        length, err = self._replies.get(qh or 0, (0, 0))
        if nbytes:
            nbytes[0] = length
        if error:
            error[0] = err
        if dnssec:
            dnssec[0] = -1
        return _DKIM_DNS_SUCCESS

    def _cancel(self, _service, qh) -> int:
        self._replies.pop(qh or 0, None)
        return 0


_OPENDKIM: ctypes.CDLL | None = None


def opendkim(message: bytes, dns_server: DnsServer) -> list[SignatureCheck]:
    """Every signature of the message as OpenDKIM's library (libopendkim) judges it."""
    return opendkim_many([message], dns_server)[0]


def opendkim_many(messages: Sequence[bytes], dns_server: DnsServer) -> list[list[SignatureCheck]]:
    """opendkim for many messages with one library instance."""
    global _OPENDKIM
    if _OPENDKIM is None:
        _OPENDKIM = _libopendkim()
    lib = _OPENDKIM
    handle = lib.dkim_init(None, None)
    if not handle:
        raise RuntimeError("dkim_init failed")
    lookup = _LoopbackKeyLookup(dns_server)
    lookup.install(lib, handle)
    try:
        return [_opendkim_one(lib, handle, message, n) for n, message in enumerate(messages)]
    finally:
        lib.dkim_close(handle)


def _opendkim_one(lib: ctypes.CDLL, handle: int, message: bytes, n: int) -> list[SignatureCheck]:
    status = ctypes.c_int(0)
    ctx = lib.dkim_verify(handle, b"message-%d" % n, None, ctypes.byref(status))
    if not ctx:
        raise RuntimeError(f"dkim_verify failed: {lib.dkim_getresultstr(status.value).decode()}")
    try:
        data = ctypes.create_string_buffer(message, len(message))
        for chunk in (data, None):
            stat = lib.dkim_chunk(ctx, chunk, len(message) if chunk is not None else 0)
            if stat != _DKIM_STAT_OK:
                return [_unverifiable(lib, ctx, stat)]
        testkey = ctypes.c_bool(False)
        eom = lib.dkim_eom(ctx, ctypes.byref(testkey))
        sigs = ctypes.POINTER(ctypes.c_void_p)()
        count = ctypes.c_int(0)
        if lib.dkim_getsiglist(ctx, ctypes.byref(sigs), ctypes.byref(count)) != _DKIM_STAT_OK or count.value == 0:
            return [_unverifiable(lib, ctx, eom)]
        return [_signature_check(lib, sigs[i]) for i in range(count.value)]
    finally:
        lib.dkim_free(ctx)


def _signature_check(lib: ctypes.CDLL, sig: int) -> SignatureCheck:
    algorithm = ctypes.c_int(-1)
    lib.dkim_sig_getsignalg(sig, ctypes.byref(algorithm))
    flags = lib.dkim_sig_getflags(sig)
    body = lib.dkim_sig_getbh(sig)
    error = lib.dkim_sig_geterror(sig)
    passed = bool(flags & _DKIM_SIGFLAG_PASSED) and body == _DKIM_SIGBH_MATCH
    if passed:
        reason = "pass"
    elif body == _DKIM_SIGBH_MISMATCH:
        reason = "body hash mismatch"
    elif error:
        reason = (lib.dkim_sig_geterrorstr(error) or b"error %d" % error).decode()
    elif not flags & _DKIM_SIGFLAG_PROCESSED:
        reason = "not processed"
    else:
        reason = "signature did not verify"
    return SignatureCheck(
        verifier="OpenDKIM",
        algorithm=_ALGORITHMS.get(algorithm.value, str(algorithm.value)),
        domain=(lib.dkim_sig_getdomain(sig) or b"").decode(),
        selector=(lib.dkim_sig_getselector(sig) or b"").decode(),
        passed=passed,
        reason=reason,
    )


def _unverifiable(lib: ctypes.CDLL, ctx: int, stat: int) -> SignatureCheck:
    detail = lib.dkim_geterror(ctx)
    reason = lib.dkim_getresultstr(stat).decode() + (f" ({detail.decode()})" if detail else "")
    return SignatureCheck("OpenDKIM", "", "", "", False, reason)


# dkimpy, the product's own library, against the same server


def dkimpy(message: bytes, dns_server: DnsServer) -> list[SignatureCheck]:
    """Every signature of the message as dkimpy judges it, its key looked up on the test's server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns_server.host]
    resolver.port = dns_server.port

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    log = io.StringIO()
    logger = logging.getLogger(f"{__name__}.dkimpy")
    logger.propagate = False
    handler = logging.StreamHandler(log)
    logger.addHandler(handler)
    try:
        checker = dkim.DKIM(message, logger=logger)
        count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
        checks = []
        for idx in range(count):
            log.seek(0)
            log.truncate()
            try:
                passed = checker.verify(idx=idx, dnsfunc=txt)
            except dkim.DKIMException as exc:
                passed = False
                log.write(str(exc))
            fields = checker.signature_fields or {}
            checks.append(
                SignatureCheck(
                    verifier="dkimpy",
                    algorithm=fields.get(b"a", b"").decode(),
                    domain=fields.get(b"d", b"").decode(),
                    selector=fields.get(b"s", b"").decode(),
                    passed=bool(passed),
                    reason="pass" if passed else log.getvalue().strip() or "signature did not verify",
                )
            )
        return checks
    finally:
        logger.removeHandler(handler)


def verify_everywhere(messages: Sequence[bytes], dns_server: DnsServer) -> list[list[SignatureCheck]]:
    """Each message's signatures by dkimpy and by the independent verifier of their algorithm.

    Mail::DKIM's verdicts are kept for rsa-sha256 signatures and OpenDKIM's for ed25519-sha256 ones, so
    a message signed with both keys has four checks, each of which should pass.
    """
    by_mail_dkim = mail_dkim_many(messages, dns_server)
    by_opendkim = opendkim_many(messages, dns_server)
    return [
        dkimpy(message, dns_server)
        + [check for check in rsa if check.algorithm == RSA]
        + [check for check in ed if check.algorithm == ED25519]
        for message, rsa, ed in zip(messages, by_mail_dkim, by_opendkim, strict=True)
    ]
