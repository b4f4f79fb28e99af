"""The loopback DNS server the tests publish records on, queried by dnspython over UDP and TCP."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from tests.support.dns import DnsServer


def _resolver(server: DnsServer, lifetime: float = 5.0) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = lifetime
    return resolver


def _ask(server: DnsServer, name: str, rtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rtype)
    if tcp:
        return dns.query.tcp(query, server.host, port=server.port, timeout=5)
    return dns.query.udp(query, server.host, port=server.port, timeout=5)


def test_records_answer_over_udp_and_tcp(dns_server):
    # MX, A, AAAA and TXT records of a zone are answered authoritatively on one port over UDP and TCP,
    # and the zone apex has its SOA and NS records.
    dns_server.add_zone("example.net")
    dns_server.add("example.net", "MX", "20 mx2.example.net.")
    dns_server.add("example.net", "MX", "10 mx1.example.net.")
    dns_server.add("mx1.example.net", "A", "127.0.0.1")
    dns_server.add("mx1.example.net", "AAAA", "::1")
    dns_server.add_txt("example.net", "v=spf1 -all")
    resolver = _resolver(dns_server)

    for tcp in (False, True):
        mx = resolver.resolve("example.net", "MX", tcp=tcp)
        assert sorted((r.preference, r.exchange.to_text()) for r in mx) == [
            (10, "mx1.example.net."),
            (20, "mx2.example.net."),
        ]
        assert [r.address for r in resolver.resolve("mx1.example.net", "A", tcp=tcp)] == ["127.0.0.1"]
        assert [r.address for r in resolver.resolve("mx1.example.net", "AAAA", tcp=tcp)] == ["::1"]
        assert [r.strings for r in resolver.resolve("example.net", "TXT", tcp=tcp)] == [(b"v=spf1 -all",)]
        [soa] = resolver.resolve("example.net", "SOA", tcp=tcp)
        assert soa.mname.to_text() == "ns.example.net."
        assert [r.target.to_text() for r in resolver.resolve("example.net", "NS", tcp=tcp)] == ["ns.example.net."]
    reply = _ask(dns_server, "example.net", "MX")
    assert reply.flags & dns.flags.AA
    assert {(q.name, q.rtype, q.protocol) for q in dns_server.queries} >= {
        ("example.net.", "MX", "udp"),
        ("example.net.", "MX", "tcp"),
    }


def test_nxdomain_and_nodata_are_told_apart(dns_server):
    # A name that does not exist is NXDOMAIN; a name that exists without the asked type, or an empty
    # non-terminal above a record (_domainkey under a selector), is NODATA: NOERROR, no answer, the SOA.
    dns_server.add_zone("example.net")
    dns_server.add("www.example.net", "A", "192.0.2.1")
    dns_server.add_txt("s1._domainkey.example.net", "v=DKIM1; p=")
    resolver = _resolver(dns_server)

    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nothing.example.net", "A")
    for name, rtype in (("www.example.net", "MX"), ("_domainkey.example.net", "TXT"), ("example.net", "A")):
        with pytest.raises(dns.resolver.NoAnswer):
            resolver.resolve(name, rtype)
    nodata = _ask(dns_server, "www.example.net", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert [rrset.rdtype for rrset in nodata.authority] == [dns.rdatatype.SOA]
    nxdomain = _ask(dns_server, "nothing.example.net", "A")
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN
    assert [rrset.rdtype for rrset in nxdomain.authority] == [dns.rdatatype.SOA]
    assert _ask(dns_server, "elsewhere.example", "A").rcode() == dns.rcode.REFUSED


def test_long_txt_is_split_into_255_byte_strings_and_truncated_over_udp(dns_server):
    # A DKIM record of an RSA key is published as 255-byte strings; an answer larger than 512 bytes
    # comes back over UDP truncated (TC, question kept) and whole over TCP, which the resolver falls back to.
    dns_server.add_zone("example.com")
    value = "v=DKIM1; k=rsa; p=" + "A" * 700
    dns_server.add_txt("big._domainkey.example.com", value)

    truncated = _ask(dns_server, "big._domainkey.example.com", "TXT")
    assert truncated.flags & dns.flags.TC and not truncated.answer
    assert [q.name.to_text() for q in truncated.question] == ["big._domainkey.example.com."]
    [record] = _resolver(dns_server).resolve("big._domainkey.example.com", "TXT")
    assert [len(s) for s in record.strings] == [255, 255, 208]
    assert b"".join(record.strings).decode() == value
    protocols = [q.protocol for q in dns_server.queries if q.name == "big._domainkey.example.com."]
    assert protocols[-2:] == ["udp", "tcp"]


def test_smaller_answers_truncate_when_the_udp_limit_is_lowered(dns_server):
    # With max_udp_size lowered, even an ordinary answer is truncated over UDP and read over TCP.
    dns_server.add_zone("example.net")
    dns_server.add("example.net", "MX", "10 mx1.example.net.")
    dns_server.max_udp_size = 40
    assert _ask(dns_server, "example.net", "MX").flags & dns.flags.TC
    [mx] = _resolver(dns_server).resolve("example.net", "MX")
    assert mx.exchange.to_text() == "mx1.example.net."
    assert [q.protocol for q in dns_server.queries][-2:] == ["udp", "tcp"]


def test_records_change_while_the_server_runs(dns_server):
    # Records are added, replaced and removed at run time; a null MX is published as "0 .", a CNAME
    # inside the zone is followed.
    dns_server.add_zone("example.org")
    dns_server.add("example.org", "MX", "10 old.example.org.")
    resolver = _resolver(dns_server)
    assert [r.exchange.to_text() for r in resolver.resolve("example.org", "MX")] == ["old.example.org."]

    dns_server.replace("example.org", "MX", "0 .")
    [null] = resolver.resolve("example.org", "MX")
    assert (null.preference, null.exchange.to_text()) == (0, ".")

    dns_server.add("alias.example.org", "CNAME", "host.example.org.")
    dns_server.add("host.example.org", "A", "192.0.2.7")
    answer = resolver.resolve("alias.example.org", "A")
    assert [r.address for r in answer] == ["192.0.2.7"]
    assert answer.canonical_name.to_text() == "host.example.org."

    dns_server.remove("host.example.org", "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("host.example.org", "A")
    dns_server.remove("example.org", "MX")
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("example.org", "MX")
    with pytest.raises(ValueError, match="none of the served zones"):
        dns_server.add("example.com", "A", "192.0.2.1")


def test_servfail_and_delay_simulate_broken_and_slow_servers(dns_server):
    # A name set to fail answers SERVFAIL; one set to never answer times the client out; a delayed one
    # times out a client that waits less than the delay and answers one that waits longer; healed,
    # both answer again.
    dns_server.add_zone("example.net")
    dns_server.add("broken.example.net", "A", "192.0.2.1")
    dns_server.add("slow.example.net", "A", "192.0.2.2")

    dns_server.fail("broken.example.net")
    assert _ask(dns_server, "broken.example.net", "A").rcode() == dns.rcode.SERVFAIL
    with pytest.raises(dns.resolver.NoNameservers):
        _resolver(dns_server).resolve("broken.example.net", "A")

    dns_server.delay("slow.example.net", None)
    with pytest.raises(dns.resolver.LifetimeTimeout):
        _resolver(dns_server, lifetime=0.5).resolve("slow.example.net", "A")

    dns_server.delay("slow.example.net", 1.0)
    with pytest.raises(dns.resolver.LifetimeTimeout):
        _resolver(dns_server, lifetime=0.2).resolve("slow.example.net", "A")
    assert [r.address for r in _resolver(dns_server).resolve("slow.example.net", "A")] == ["192.0.2.2"]

    dns_server.heal("broken.example.net")
    dns_server.heal("slow.example.net")
    assert [r.address for r in _resolver(dns_server).resolve("broken.example.net", "A")] == ["192.0.2.1"]
    assert dns_server.errors == []
