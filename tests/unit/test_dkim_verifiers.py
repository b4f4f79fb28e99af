"""The independent DKIM verifiers (Mail::DKIM, OpenDKIM) really verify, with keys from the loopback DNS."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.sender.dkim import DkimSigner, SigningKey, dns_record
from tests.support.dkim_verify import ED25519, RSA, dkimpy, mail_dkim, opendkim, verify_everywhere

DOMAIN = "mail.example.com"
MESSAGE = (
    b"From: Shop <news@mail.example.com>\r\nTo: taro@example.net\r\nSubject: autumn sale\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@mail.example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Taro,\r\nall coats 20% off.\r\n"
)


def _keys() -> tuple[SigningKey, SigningKey]:
    return (
        SigningKey(DOMAIN, "rsa1", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        SigningKey(DOMAIN, "ed1", ed25519.Ed25519PrivateKey.generate()),
    )


def _publish(dns_server, *keys: SigningKey) -> None:
    for key in keys:
        dns_server.remove(f"{key.selector}._domainkey.{DOMAIN}", "TXT")
        dns_server.add_txt(f"{key.selector}._domainkey.{DOMAIN}", dns_record(key))


@pytest.fixture
def signed(dns_server) -> tuple[bytes, tuple[SigningKey, SigningKey]]:
    """A message signed rsa-sha256 and ed25519-sha256 by the sender's signer, its keys published."""
    dns_server.add_zone(DOMAIN)
    keys = _keys()
    _publish(dns_server, *keys)
    return DkimSigner(list(keys)).sign(MESSAGE), keys


def _independent(message: bytes, dns_server) -> dict[str, tuple[bool, str]]:
    rsa_check = [c for c in mail_dkim(message, dns_server) if c.algorithm == RSA]
    ed_check = [c for c in opendkim(message, dns_server) if c.algorithm == ED25519]
    return {check.verifier: (check.passed, check.reason) for check in rsa_check + ed_check}


def test_both_signatures_pass_every_verifier(dns_server, signed):
    # An untouched message signed with both keys passes dkimpy, Mail::DKIM (rsa-sha256) and OpenDKIM
    # (ed25519-sha256), each fetching the key from the loopback DNS.
    message, _ = signed
    [checks] = verify_everywhere([message], dns_server)
    assert {(c.verifier, c.algorithm, c.selector, c.domain) for c in checks} == {
        ("dkimpy", RSA, "rsa1", DOMAIN),
        ("dkimpy", ED25519, "ed1", DOMAIN),
        ("Mail::DKIM", RSA, "rsa1", DOMAIN),
        ("OpenDKIM", ED25519, "ed1", DOMAIN),
    }
    assert all(c.passed and c.reason == "pass" for c in checks), checks
    asked = {q.name for q in dns_server.queries}
    assert asked == {f"rsa1._domainkey.{DOMAIN}.", f"ed1._domainkey.{DOMAIN}."}


@pytest.mark.parametrize(
    ("what", "before", "after", "mail_dkim_says", "opendkim_says"),
    [
        ("body", b"all coats 20% off.", b"all coats 90% off.", "body has been altered", "body hash mismatch"),
        (
            "signed header",
            b"Subject: autumn sale",
            b"Subject: autumn SALE",
            "message has been altered",
            "signature verification failed",
        ),
    ],
)
def test_a_tampered_message_fails_each_verifier(dns_server, signed, what, before, after, mail_dkim_says, opendkim_says):
    # Changing the body or a signed header after signing fails both signatures in every verifier,
    # each giving its reason.
    message, _ = signed
    tampered = message.replace(before, after)
    assert tampered != message, what
    assert _independent(tampered, dns_server) == {
        "Mail::DKIM": (False, f"fail ({mail_dkim_says})"),
        "OpenDKIM": (False, opendkim_says),
    }
    assert not any(check.passed for check in dkimpy(tampered, dns_server))


def test_a_signature_made_with_another_key_fails_each_verifier(dns_server, signed):
    # With other keys published under the same selectors, neither signature verifies anywhere.
    message, _ = signed
    _publish(dns_server, *_keys())
    assert _independent(message, dns_server) == {
        "Mail::DKIM": (False, "fail (bad RSA signature)"),
        "OpenDKIM": (False, "signature verification failed"),
    }
    assert not any(check.passed for check in dkimpy(message, dns_server))


def test_missing_and_unreachable_keys_fail_with_the_dns_reason(dns_server, signed):
    # No key record (NXDOMAIN) and a failing nameserver (SERVFAIL) never pass; each verifier says why.
    message, _ = signed
    dns_server.remove(f"rsa1._domainkey.{DOMAIN}")
    dns_server.remove(f"ed1._domainkey.{DOMAIN}")
    assert _independent(message, dns_server) == {
        "Mail::DKIM": (False, "invalid (public key: not available)"),
        "OpenDKIM": (False, "key not found in DNS"),
    }
    _publish(dns_server, *signed[1])
    dns_server.fail(f"rsa1._domainkey.{DOMAIN}")
    dns_server.fail(f"ed1._domainkey.{DOMAIN}")
    assert _independent(message, dns_server) == {
        "Mail::DKIM": (False, "invalid (public key: DNS error: SERVFAIL)"),
        "OpenDKIM": (False, "key DNS query failed"),
    }


def test_keys_too_large_for_udp_are_fetched_over_tcp(dns_server, signed):
    # When the key record does not fit a UDP reply, the server truncates it and every verifier asks
    # again over TCP, then passes.
    message, _ = signed
    dns_server.max_udp_size = 100
    [checks] = verify_everywhere([message], dns_server)
    assert len(checks) == 4 and all(c.passed for c in checks), checks
    for selector in ("rsa1", "ed1"):
        protocols = {q.protocol for q in dns_server.queries if q.name == f"{selector}._domainkey.{DOMAIN}."}
        assert protocols == {"udp", "tcp"}, selector
