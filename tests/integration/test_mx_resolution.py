"""The sender's MX resolution against a real authoritative DNS server (SENDER_DNS_RESOLVER), delivering to a sink."""

from __future__ import annotations

import pytest

from services.common.nameserver import nameserver_address
from services.common.settings import ConfigError
from services.sender.config import Config
from services.sender.ledger import DeliveryStatus
from services.sender.smtp import MxResolver, SmtpDelivery

SENT, DEFERRED, REJECTED = DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.REJECTED

MESSAGE = b"From: news@shop.example.com\r\nTo: taro@example.net\r\nSubject: hi\r\n\r\nHello\r\n"


@pytest.fixture
def zone(dns_server):
    """example.net served by the loopback DNS, its MX the host the SMTP sink listens on (localhost)."""
    dns_server.add_zone("example.net")
    dns_server.add("example.net", "MX", "10 localhost.")
    return dns_server


async def _deliver(dns_server, smtp_sink, tls_files, recipient: str):
    delivery = SmtpDelivery(
        ehlo_name="mail.example.com",
        tls_required=True,
        tls_ca_file=str(tls_files[0]),
        timeout=10,
        lookup=MxResolver(port=smtp_sink.port, nameserver=dns_server.address),
    )
    try:
        return await delivery.deliver("bounces@bounces.example.com", recipient, MESSAGE)
    finally:
        await delivery.close()


async def test_mail_goes_to_the_host_the_mx_record_names(zone, smtp_sink, tls_files):
    # With no relay, a message for taro@example.net is offered to the MX host that the configured
    # nameserver names, over TLS, and accepted there.
    result = await _deliver(zone, smtp_sink, tls_files, "taro@example.net")
    assert (result.status, result.code, result.tls) == (SENT, 250, True)
    [caught] = await smtp_sink.wait_for(1, timeout=10)
    assert caught.rcpt_tos == ["taro@example.net"] and caught.tls
    assert ("example.net.", "MX") in {(q.name, q.rtype) for q in zone.queries}


async def test_lowest_preference_first_and_a_record_fallback(zone):
    # MX hosts come lowest preference first; a domain without MX but with an A record takes mail itself
    # (RFC 5321 5.1); answers too large for UDP are read over TCP.
    zone.add("example.net", "MX", "5 mx0.example.net.")
    zone.add("example.net", "MX", "20 mx2.example.net.")
    zone.add("plain.example.net", "A", "192.0.2.10")
    zone.max_udp_size = 60
    resolver = MxResolver(port=2525, nameserver=zone.address)
    assert await resolver("Example.NET") == [("mx0.example.net", 2525), ("localhost", 2525), ("mx2.example.net", 2525)]
    assert await resolver("plain.example.net") == [("plain.example.net", 2525)]
    assert ("example.net.", "MX", "tcp") in {(q.name, q.rtype, q.protocol) for q in zone.queries}


@pytest.mark.parametrize(
    ("domain", "setup", "outcome", "reason"),
    [
        (
            "nomail.example.net",
            lambda z: z.add("nomail.example.net", "MX", "0 ."),
            REJECTED,
            "accepts no mail (null MX)",
        ),
        ("gone.example.net", lambda z: None, REJECTED, "the domain gone.example.net does not exist"),
        (
            "bare.example.net",
            lambda z: z.add_txt("bare.example.net", "v=spf1 -all"),
            REJECTED,
            "has no MX, A or AAAA record",
        ),
        ("broken.example.net", lambda z: z.fail("broken.example.net"), DEFERRED, "DNS lookup for broken.example.net"),
    ],
)
async def test_what_the_dns_says_decides_rejection_or_retry(zone, smtp_sink, tls_files, domain, setup, outcome, reason):
    # A null MX, a domain that does not exist and one with no mail host are rejected for good; a failing
    # nameserver (SERVFAIL) defers the message for a retry. Nothing reaches any SMTP server.
    setup(zone)
    result = await _deliver(zone, smtp_sink, tls_files, f"someone@{domain}")
    assert result.status == outcome
    assert reason in result.message
    assert smtp_sink.messages == []


def test_the_nameserver_setting_is_checked(monkeypatch, pki):
    # SENDER_DNS_RESOLVER takes IP:port, [IPv6]:port or a bare IP (port 53) and SENDER_MX_PORT the port of
    # MX hosts; anything else stops start-up naming the setting.
    assert nameserver_address("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert nameserver_address("[::1]:5353") == ("::1", 5353)
    assert nameserver_address("::1") == ("::1", 53)
    assert nameserver_address("192.0.2.53") == ("192.0.2.53", 53)
    for bad in ("dns.example.net:53", "127.0.0.1:0", "127.0.0.1:dns", "[::1]:99999"):
        with pytest.raises(ValueError, match=r"nameserver address|valid port"):
            nameserver_address(bad)
    settings = {
        "DATABASE_URL": "postgresql://localhost/mailblast",
        "NATS_URL": "nats://localhost:4222",
        "MAILBLAST_INTERNAL_KEY": "k" * 64,
        "SENDER_RETURN_PATH_DOMAIN": "bounces.example.com",
        "SENDER_UNSUBSCRIBE_URL": "https://mail.example.com/u/",
        "SENDER_DNS_RESOLVER": "127.0.0.1:5353",
        "SENDER_MX_PORT": "2525",
        **pki.env("sender"),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    config = Config.from_env()
    assert (config.dns_resolver, config.mx_port) == ("127.0.0.1:5353", 2525)
    monkeypatch.delenv("SENDER_DNS_RESOLVER")
    monkeypatch.delenv("SENDER_MX_PORT")
    assert (Config.from_env().dns_resolver, Config.from_env().mx_port) == ("", 25)
    monkeypatch.setenv("SENDER_DNS_RESOLVER", "resolver.example.net")
    with pytest.raises(ConfigError, match=r"SENDER_DNS_RESOLVER: 'resolver\.example\.net' is not a nameserver address"):
        Config.from_env()
