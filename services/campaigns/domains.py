"""Sending domains: DKIM keys, the DNS records an organisation publishes, and the live check of each.

Pure domain code: the DNS answers come through the narrow `Lookup` interface (dnslookup.py asks the
real resolver), the keys are sealed by the caller. Every explanation is a `Problem` template, so the
console shows it in Japanese and the API in English.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.common.errors import Problem

# RFC 7208 4.6.4: an SPF evaluation may cause at most 10 DNS look-ups.
SPF_LOOKUP_LIMIT = 10
# The host under the customer's domain that envelope senders (VERP bounces) use; a CNAME to ours.
RETURN_PATH_LABEL = "mb-bounces"
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# The SPF mechanisms and modifier that cost a DNS look-up each.
_SPF_LOOKUP_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})


class Status(enum.StrEnum):
    """The result of checking one record."""

    PASS = "pass"  # noqa: S105 (a check result, not a password)
    MISSING = "missing"
    WRONG = "wrong"
    # The look-up itself failed (timeout, SERVFAIL): nothing is known, nothing changes.
    ERROR = "error"


class Purpose(enum.StrEnum):
    """What a record is for."""

    DKIM_RSA = "dkim-rsa"
    DKIM_ED25519 = "dkim-ed25519"
    SPF = "spf"
    DMARC = "dmarc"
    RETURN_PATH = "return-path"
    MTA_STS = "mta-sts"
    TLS_RPT = "tls-rpt"


REQUIRED = (Purpose.DKIM_RSA, Purpose.DKIM_ED25519, Purpose.SPF, Purpose.DMARC, Purpose.RETURN_PATH)


class LookupFailed(Problem):
    """A DNS look-up that got no answer (timeout, SERVFAIL): neither present nor absent."""


class Lookup(Protocol):
    """The DNS, as the checks need it."""

    async def txt(self, name: str) -> list[str]:
        """The TXT records at `name` (each one's strings joined); [] when there is none. Raises LookupFailed."""
        ...

    async def cname(self, name: str) -> str | None:
        """The target of the CNAME at `name` (no final dot), or None. Raises LookupFailed."""
        ...


@dataclass(frozen=True)
class Platform:
    """What the installation publishes that customers' records point at."""

    # The SPF record of the sending addresses, e.g. _spf.mailblast.example.com.
    spf_include: str
    # The bounce domain (SENDER_RETURN_PATH_DOMAIN): its MX is the bounce service, its SPF the senders.
    return_path_target: str
    # Where DMARC aggregate reports go; empty: dmarc-reports@<the customer's domain>.
    dmarc_report_address: str = ""


def normalize_domain(text: str) -> str:
    """The domain as stored (lower case, IDNA A-labels, no final dot); Problem naming what is wrong."""
    raw = text.strip().rstrip(".")
    if not raw:
        raise Problem("give a domain name, such as example.co.jp")
    try:
        ascii_name = raw.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise Problem("%(domain)r is not a domain name", domain=text) from None
    labels = ascii_name.split(".")
    if len(labels) < 2 or len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise Problem("%(domain)r is not a domain name", domain=text)
    if labels[-1].isdigit():
        raise Problem("%(domain)r is an address, not a domain name", domain=text)
    return ascii_name


def from_domain(address: str) -> str:
    """The domain of a From address, as normalize_domain stores domains ("" when it has none)."""
    _, at, domain = address.strip().rpartition("@")
    if not at:
        return ""
    try:
        return normalize_domain(domain)
    except Problem:
        return ""


@dataclass(frozen=True)
class NewKey:
    """A freshly generated DKIM key: selector, algorithm, private key (PEM, to seal) and public TXT value."""

    selector: str
    algorithm: str
    private_pem: str = field(repr=False)
    public_record: str


def selectors(generation: int) -> tuple[str, str]:
    """The RSA and Ed25519 selectors of a key generation; a rotation publishes the next pair beside these."""
    return f"mb{generation}-rsa", f"mb{generation}-ed25519"


def generate_keys(generation: int) -> tuple[NewKey, NewKey]:
    """An RSA-2048 and an Ed25519 key for one generation."""
    rsa_selector, ed_selector = selectors(generation)
    pkcs8, pem = serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_public = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_public = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return (
        NewKey(
            rsa_selector,
            "rsa",
            rsa_key.private_bytes(pem, pkcs8, serialization.NoEncryption()).decode(),
            f"v=DKIM1; k=rsa; p={base64.b64encode(rsa_public).decode()}",
        ),
        NewKey(
            ed_selector,
            "ed25519",
            ed_key.private_bytes(pem, pkcs8, serialization.NoEncryption()).decode(),
            # RFC 8463: the bare 32-byte public key.
            f"v=DKIM1; k=ed25519; p={base64.b64encode(ed_public).decode()}",
        ),
    )


@dataclass(frozen=True)
class PublishedKey:
    """A DKIM key of a domain as its records need it (no private part)."""

    selector: str
    algorithm: str
    public_record: str


@dataclass(frozen=True)
class Record:
    """One DNS record the customer publishes: what for, type, name, value; optional ones are advice."""

    purpose: Purpose
    rtype: str
    name: str
    value: str
    required: bool = True


def return_path_host(domain: str) -> str:
    """The envelope senders' domain under the customer's domain (SPF aligns with the From)."""
    return f"{RETURN_PATH_LABEL}.{domain}"


def dmarc_value(domain: str, platform: Platform) -> str:
    """The DMARC record to start with: monitoring only (p=none), aggregate reports to an address."""
    report = platform.dmarc_report_address or f"dmarc-reports@{domain}"
    return f"v=DMARC1; p=none; rua=mailto:{report}; adkim=r; aspf=r"


def records(domain: str, keys: Sequence[PublishedKey], platform: Platform, existing_spf: str | None) -> list[Record]:
    """Every record to publish for `domain`, the SPF one merged into the record the domain has."""
    out = [
        Record(Purpose.DKIM_RSA if key.algorithm == "rsa" else Purpose.DKIM_ED25519, "TXT",
               f"{key.selector}._domainkey.{domain}", key.public_record)
        for key in keys
    ]  # fmt: skip
    out += [
        Record(Purpose.SPF, "TXT", domain, merge_spf(existing_spf, platform.spf_include)),
        Record(Purpose.DMARC, "TXT", f"_dmarc.{domain}", dmarc_value(domain, platform)),
        Record(Purpose.RETURN_PATH, "CNAME", return_path_host(domain), platform.return_path_target),
        # MTA-STS also needs the policy file at https://mta-sts.<domain>/.well-known/mta-sts.txt.
        Record(Purpose.MTA_STS, "TXT", f"_mta-sts.{domain}", "v=STSv1; id=1", required=False),
        Record(Purpose.TLS_RPT, "TXT", f"_smtp._tls.{domain}", f"v=TLSRPTv1; rua=mailto:tls-reports@{domain}",
               required=False),
    ]  # fmt: skip
    return out


def merge_spf(existing: str | None, include: str) -> str:
    """The domain's SPF record with `include:` ours added before its final `all` (or a new record)."""
    mechanism = f"include:{include}"
    if not existing:
        return f"v=spf1 {mechanism} ~all"
    terms = existing.split()
    if any(term.lower().lstrip("+") == mechanism.lower() for term in terms):
        return " ".join(terms)
    # Before the first `all` or modifier: terms after `all` are never evaluated.
    at = next(
        (i for i, term in enumerate(terms) if i and (term.lower().lstrip("+-~?") == "all" or "=" in term)),
        len(terms),
    )
    return " ".join([*terms[:at], mechanism, *terms[at:]])


def _spf_of(answers: Sequence[str]) -> list[str]:
    return [text for text in answers if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")]


async def count_spf_lookups(record: str, lookup: Lookup, *, seen: frozenset[str] = frozenset()) -> int:
    """The DNS look-ups evaluating `record` takes (RFC 7208 4.6.4), includes and redirects followed."""
    count = 0
    for term in record.split()[1:]:
        bare = term.lower().lstrip("+-~?")
        if re.split(r"[:/=]", bare, maxsplit=1)[0] not in _SPF_LOOKUP_TERMS:
            continue
        count += 1
        if bare.startswith(("include:", "redirect=")):
            target = bare.split(":", 1)[1] if bare.startswith("include:") else bare.split("=", 1)[1]
            if target in seen:
                raise Problem("the SPF record of %(name)s includes itself", name=target)
            found = _spf_of(await lookup.txt(target))
            if len(found) != 1:
                raise Problem("the SPF include %(name)s has no single SPF record", name=target)
            count += await count_spf_lookups(found[0], lookup, seen=seen | {target})
        if count > 3 * SPF_LOOKUP_LIMIT:
            break
    return count


@dataclass(frozen=True)
class Check:
    """The live check of one record: status, what DNS has, and (unless it passed) what is wrong and the fix."""

    record: Record
    status: Status
    found: tuple[str, ...] = ()
    problem: Problem | None = None
    # What to publish instead (the record's value); "" when nothing needs doing.
    fix: str = ""
    # Advice beside a pass (DMARC at p=none: when to tighten).
    advice: Problem | None = None


@dataclass(frozen=True)
class Verification:
    """Every check of a domain; verified when every required record passed."""

    checks: tuple[Check, ...]

    @property
    def verified(self) -> bool:
        """All required records pass."""
        return all(c.status == Status.PASS for c in self.checks if c.record.required)

    @property
    def conclusive(self) -> bool:
        """No look-up failed: the result may change the domain's state."""
        return all(c.status != Status.ERROR for c in self.checks)


def _tags(text: str) -> dict[str, str]:
    tags = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags[name.strip().lower()] = "".join(value.split())
    return tags


def _dkim(record: Record, found: list[str]) -> Check:
    keys = [text for text in found if "p=" in text]
    if not keys:
        return Check(record, Status.MISSING, tuple(found), Problem("no DKIM key is published at %(name)s",
                     name=record.name), record.value)  # fmt: skip
    want = _tags(record.value)
    for text in keys:
        have = _tags(text)
        if have.get("p") == want["p"] and have.get("k", "rsa") == want["k"]:
            return Check(record, Status.PASS, tuple(found))
    return Check(record, Status.WRONG, tuple(found), Problem("the DKIM key at %(name)s is not the one this domain "
                 "signs with", name=record.name), record.value)  # fmt: skip


async def _spf(record: Record, found: list[str], include: str, lookup: Lookup) -> Check:
    spf = _spf_of(found)
    if not spf:
        return Check(record, Status.MISSING, (), Problem("%(name)s has no SPF record", name=record.name), record.value)
    if len(spf) > 1:
        problem = Problem("%(name)s has %(count)s SPF records; receivers then fail SPF: publish one", name=record.name,
                          count=len(spf))  # fmt: skip
        return Check(record, Status.WRONG, tuple(spf), problem, record.value)
    if f"include:{include}" not in spf[0].lower().split():
        problem = Problem("the SPF record of %(name)s does not include %(include)s", name=record.name, include=include)
        return Check(record, Status.WRONG, tuple(spf), problem, merge_spf(spf[0], include))
    lookups = await count_spf_lookups(spf[0], lookup)
    if lookups > SPF_LOOKUP_LIMIT:
        problem = Problem("the SPF record of %(name)s needs %(count)s DNS look-ups; at most %(limit)s are allowed: "
                          "replace some include: by ip4:/ip6: ranges", name=record.name, count=lookups,
                          limit=SPF_LOOKUP_LIMIT)  # fmt: skip
        return Check(record, Status.WRONG, tuple(spf), problem)
    return Check(record, Status.PASS, tuple(spf))


def _dmarc(record: Record, found: list[str]) -> Check:
    dmarc = [text for text in found if text.replace(" ", "").upper().startswith("V=DMARC1")]
    if not dmarc:
        return Check(record, Status.MISSING, (), Problem("%(name)s has no DMARC record", name=record.name),
                     record.value)  # fmt: skip
    policy = _tags(dmarc[0]).get("p", "")
    if policy not in ("none", "quarantine", "reject"):
        problem = Problem("the DMARC record at %(name)s has no valid policy (p=none, quarantine or reject)",
                          name=record.name)  # fmt: skip
        return Check(record, Status.WRONG, tuple(dmarc), problem, record.value)
    advice = None
    if policy == "none":
        advice = Problem("p=none only monitors: once the reports show all your mail aligned for two weeks, tighten "
                         "to p=quarantine, then p=reject")  # fmt: skip
    return Check(record, Status.PASS, tuple(dmarc), advice=advice)


def _cname(record: Record, found: str | None) -> Check:
    if found is None:
        return Check(record, Status.MISSING, (), Problem("%(name)s has no CNAME record", name=record.name),
                     record.value)  # fmt: skip
    if found.lower().rstrip(".") != record.value.lower():
        problem = Problem("%(name)s points to %(found)s instead of %(want)s", name=record.name, found=found,
                          want=record.value)  # fmt: skip
        return Check(record, Status.WRONG, (found,), problem, record.value)
    return Check(record, Status.PASS, (found,))


def _optional(record: Record, found: list[str], version: str) -> Check:
    if any(text.replace(" ", "").upper().startswith(version) for text in found):
        return Check(record, Status.PASS, tuple(found))
    return Check(record, Status.MISSING, tuple(found), Problem("%(name)s is not published (optional)",
                 name=record.name), record.value)  # fmt: skip


async def check_record(record: Record, lookup: Lookup, platform: Platform) -> Check:
    """The live state of one record."""
    try:
        if record.rtype == "CNAME":
            return _cname(record, await lookup.cname(record.name))
        found = await lookup.txt(record.name)
        if record.purpose in (Purpose.DKIM_RSA, Purpose.DKIM_ED25519):
            return _dkim(record, found)
        if record.purpose == Purpose.SPF:
            return await _spf(record, found, platform.spf_include, lookup)
        if record.purpose == Purpose.DMARC:
            return _dmarc(record, found)
        version = "V=STSV1" if record.purpose == Purpose.MTA_STS else "V=TLSRPTV1"
        return _optional(record, found, version)
    except LookupFailed as exc:
        return Check(record, Status.ERROR, (), exc)
    except Problem as exc:
        return Check(record, Status.WRONG, (), exc)


async def existing_spf(domain: str, lookup: Lookup) -> str | None:
    """The domain's one SPF record, or None (none, or several: the check says so)."""
    found = _spf_of(await lookup.txt(domain))
    return found[0] if len(found) == 1 else None


async def verify(domain: str, keys: Sequence[PublishedKey], platform: Platform, lookup: Lookup) -> Verification:
    """Look every record of the domain up and judge it."""
    try:
        spf = await existing_spf(domain, lookup)
    except LookupFailed:
        spf = None
    checks = [await check_record(record, lookup, platform) for record in records(domain, keys, platform, spf)]
    return Verification(tuple(checks))


def check_alignment(address: str, verified: Collection[str], platform_domain: str = "") -> str:
    """The From address's domain when mail From it aligns for DMARC (a verified domain, or the platform's)."""
    domain = from_domain(address)
    if domain and (domain in verified or domain == platform_domain):
        return domain
    raise Problem(
        "the From address %(address)s is on %(domain)s, which is not a verified sending domain of your "
        "organisation: add the domain under Sending domains and publish its DNS records",
        address=address,
        domain=domain or address,
    )
