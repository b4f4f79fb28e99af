"""Which DKIM keys and return-path domain a message gets, by its From: the organisation's own domain, or the platform's.

A From on a domain the organisation verified is signed d=<that domain> with its keys and sent with an
envelope sender under its return-path host, so DKIM and SPF both align for DMARC. A From on a domain
another organisation verified is refused. Any other From is signed with the platform's keys
(SENDER_DKIM_*) as before. The domains come from the sender's own copy (store_copies.py), never from
campaigns; the private keys arrive sealed and are opened here with MAILBLAST_DKIM_SEALING_KEYS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.common.log import get_logger
from services.common.sealing import SecretBox
from services.sender.dkim import DkimSigner, SigningKey
from services.sender.mime import MessageProblem

log = get_logger(__name__)


@dataclass(frozen=True)
class DomainKey:
    """One key of a sending domain as the copy holds it (private part sealed)."""

    selector: str
    algorithm: str
    sealed_private_key: str = field(repr=False)


@dataclass(frozen=True)
class CopiedDomain:
    """A verified sending domain from the copy."""

    organization_id: int
    domain_id: int
    domain: str
    return_path_domain: str
    keys: Sequence[DomainKey]
    version: int


class DomainCopies(Protocol):
    """The sender's copy of the organisations' verified sending domains."""

    async def verified_domains(self, domain: str) -> list[CopiedDomain]:
        """Every verified copy of `domain` (one organisation's, normally)."""
        ...


@dataclass(frozen=True)
class Signing:
    """How one message is signed and returned: the signer, and the return-path domain ("" for the platform's)."""

    signer: DkimSigner
    return_path_domain: str = ""


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


class SigningKeys:
    """Picks the signer per message by the From's domain; parsed keys are kept per domain version."""

    def __init__(self, platform: DkimSigner, copies: DomainCopies | None, box: SecretBox | None) -> None:
        self._platform = Signing(platform)
        self._copies = copies
        self._box = box
        self._parsed: dict[tuple[int, int], Signing] = {}

    async def for_sender(self, organization_id: int, from_address: str) -> Signing:
        """The signing of mail From `from_address`; MessageProblem when the domain is another organisation's."""
        if self._copies is None:
            return self._platform
        domain = _domain_of(from_address)
        found = await self._copies.verified_domains(domain) if domain else []
        own = [d for d in found if d.organization_id == organization_id]
        if not own:
            if found:
                raise MessageProblem(
                    f"the From domain {domain} is a sending domain of another organisation; it cannot be sent from"
                )
            return self._platform
        return self._signing(own[0])

    def _signing(self, copied: CopiedDomain) -> Signing:
        cached = self._parsed.get((copied.domain_id, copied.version))
        if cached is not None:
            return cached
        if self._box is None:
            log.error(
                "domain keys cannot be opened: MAILBLAST_DKIM_SEALING_KEYS is not set", domain_id=copied.domain_id
            )
            raise MessageProblem(f"the DKIM keys of {copied.domain} cannot be opened by this sender")
        keys = []
        for key in copied.keys:
            try:
                private = serialization.load_pem_private_key(
                    self._box.open(key.sealed_private_key).encode(), password=None
                )
            except Exception:
                # Never the key nor its seal in the log: which domain and selector is enough.
                log.error("a domain key cannot be opened", domain_id=copied.domain_id, selector=key.selector)
                raise MessageProblem(f"the DKIM keys of {copied.domain} cannot be opened by this sender") from None
            if not isinstance(private, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
                raise MessageProblem(f"the DKIM key {key.selector} of {copied.domain} is neither RSA nor Ed25519")
            keys.append(SigningKey(copied.domain, key.selector, private))
        # RSA first, then Ed25519, as the platform's keys.
        keys.sort(key=lambda k: k.algorithm != b"rsa-sha256")
        signing = Signing(DkimSigner(keys), copied.return_path_domain)
        if len(self._parsed) > 10_000:
            self._parsed.clear()
        self._parsed[(copied.domain_id, copied.version)] = signing
        return signing
