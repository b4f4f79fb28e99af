"""Which keys sign a message: the organisation's verified domain, the platform's, or a refusal."""

from __future__ import annotations

import asyncio
import re

import pytest
from cryptography.fernet import Fernet

from services.campaigns.domains import generate_keys
from services.common.sealing import SecretBox
from services.sender.dkim import DkimSigner
from services.sender.mime import MessageProblem
from services.sender.signing import CopiedDomain, DomainKey, SigningKeys

KEY = Fernet.generate_key()
MESSAGE = b"From: info@my-shop.co.jp\r\nTo: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


class Copies:
    """The sender's domain copy, in memory."""

    def __init__(self, domains: list[CopiedDomain]) -> None:
        self.domains = domains

    async def verified_domains(self, domain: str) -> list[CopiedDomain]:
        return [d for d in self.domains if d.domain == domain]


def copied(organization_id: int, domain: str, sealed_with: bytes = KEY) -> CopiedDomain:
    box = SecretBox((sealed_with,))
    keys = tuple(DomainKey(k.selector, k.algorithm, box.seal(k.private_pem)) for k in reversed(generate_keys(1)))
    return CopiedDomain(organization_id, 10 + organization_id, domain, f"mb-bounces.{domain}", keys, 3)


def test_the_organisations_verified_domain_signs_and_takes_the_bounces():
    # A From on the organisation's own verified domain is signed d=<that domain>, RSA first then
    # Ed25519, with the envelope under its return-path host; the platform's signer is not used.
    platform = DkimSigner([])
    keys = SigningKeys(platform, Copies([copied(1, "my-shop.co.jp")]), SecretBox((KEY,)))
    signing = asyncio.run(keys.for_sender(1, "Info@My-Shop.co.jp"))
    assert signing.return_path_domain == "mb-bounces.my-shop.co.jp"
    signed = signing.signer.sign(MESSAGE)
    headers = [line for line in signed.split(b"\r\n") if line.startswith(b"DKIM-Signature")]
    assert [b"a=rsa-sha256" in h for h in headers] == [True, False]
    assert all(b"d=my-shop.co.jp;" in h for h in headers)
    # Parsed once per domain version.
    assert asyncio.run(keys.for_sender(1, "news@my-shop.co.jp")) is signing


def test_another_organisations_domain_is_refused_and_an_unknown_one_gets_the_platforms_keys():
    # Organisation 2 cannot send From organisation 1's domain; a domain nobody verified is signed with
    # the platform's keys and returns to the platform's bounce domain, as before sending domains.
    platform = DkimSigner([])
    keys = SigningKeys(platform, Copies([copied(1, "my-shop.co.jp")]), SecretBox((KEY,)))
    with pytest.raises(MessageProblem, match="is a sending domain of another organisation"):
        asyncio.run(keys.for_sender(2, "info@my-shop.co.jp"))
    other = asyncio.run(keys.for_sender(2, "news@elsewhere.example"))
    assert other.signer is platform and other.return_path_domain == ""


def test_keys_sealed_with_a_key_the_sender_lacks_are_refused_without_showing_them(capsys):
    # A sender without the sealing key of a domain's keys refuses its mail, naming the domain only.
    keys = SigningKeys(DkimSigner([]), Copies([copied(1, "my-shop.co.jp", Fernet.generate_key())]), SecretBox((KEY,)))
    with pytest.raises(MessageProblem, match=re.escape("the DKIM keys of my-shop.co.jp cannot be opened")) as refused:
        asyncio.run(keys.for_sender(1, "info@my-shop.co.jp"))
    assert "PRIVATE" not in str(refused.value) and "gAAAA" not in capsys.readouterr().out
