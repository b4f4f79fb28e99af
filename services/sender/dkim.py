"""DKIM signatures (rsa-sha256 and ed25519-sha256), relaxed/relaxed, signed through OpenSSL.

dkimpy's own RSA is pure Python (about 140 signatures a second per core) and parses the key on every
call; here the key is parsed once and the private-key operation goes through `cryptography`. The
canonicalisation is checked byte for byte against dkimpy's, and dkimpy verifies the signatures in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, correct_empty_body, strip_trailing_lines

# The header fields signed when present; From is signed twice so a second From cannot be added.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")

_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP_RUN = re.compile(rb"[\t ]{2,}|\t")
_WSP_ANY = re.compile(rb"[\t ]+")
_UNFOLD = re.compile(rb"\r?\n")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 relaxed body canonicalisation, as dkimpy's but several times faster on text.

    dkimpy rewrites every single space it meets; only tabs and runs of blanks need rewriting.
    """
    # Substring tests run at memchr speed; the regular expressions only when there is work for them.
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", _TRAILING_WSP.sub(b"\r\n", body))
    elif b" \r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    return correct_empty_body(strip_trailing_lines(body))


@dataclass(frozen=True)
class SigningKey:
    """One DKIM key: domain, selector, algorithm and the private key parsed once."""

    domain: str
    selector: str
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def algorithm(self) -> bytes:
        """The a= value of signatures made with this key."""
        return b"ed25519-sha256" if isinstance(self.private_key, ed25519.Ed25519PrivateKey) else b"rsa-sha256"

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign the SHA-256 digest of the canonicalised headers."""
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            # RFC 8463: Ed25519 (pure) over the SHA-256 hash, as dkimpy does with PyNaCl.
            return self.private_key.sign(digest)
        return self.private_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def load_key(domain: str, selector: str, path: str | Path) -> SigningKey:
    """Read a PEM private key (RSA or Ed25519), or dkimpy's base64 Ed25519 seed, from a file."""
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: DKIM needs an RSA or Ed25519 private key")
    else:
        seed = base64.b64decode(data.strip())
        if len(seed) != 32:
            raise ValueError(f"{path}: not a PEM key nor a base64 Ed25519 seed of 32 bytes")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    return SigningKey(domain=domain, selector=selector, private_key=key)


def dns_record(key: SigningKey) -> bytes:
    """The TXT record to publish at <selector>._domainkey.<domain> for this key."""
    public = key.private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def relaxed_headers(headers: list[list[bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 6376 relaxed header canonicalisation, as dkimpy's, skipping the regular expressions
    for the common value that is neither folded nor has runs of blanks."""
    out = []
    for name, value in headers:
        if b"\n" in value[:-2] or b"\r" in value[:-2]:
            value = _UNFOLD.sub(b"", value)
        else:
            value = value[:-2] if value.endswith(b"\r\n") else value
        if b"\t" in value or b"  " in value:
            value = _WSP_ANY.sub(b" ", value)
        out.append((name.lower().rstrip(), value.strip() + b"\r\n"))
    return out


def parse_headers(block: bytes) -> list[list[bytes]]:
    """A CRLF header block as dkimpy's rfc822_parse gives it: [name, value with continuation lines and CRLF]."""
    headers: list[list[bytes]] = []
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[0] in (0x20, 0x09):
            headers[-1][1] += line + b"\r\n"
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or b" " in name:
            raise ValueError(f"malformed header line {line[:40]!r}")
        headers.append([name, value + b"\r\n"])
    return headers


def select_canonical(canonical: list[tuple[bytes, bytes]], include: Sequence[bytes]) -> list[bytes]:
    """The canonical header lines signed for h=, as RFC 6376 5.4.2 picks them: the last unused instance
    of each name, none for a name listed more often than present (so a second From cannot be added)."""
    positions: dict[bytes, list[int]] = {}
    for index, (name, _) in enumerate(canonical):
        positions.setdefault(name, []).append(index)
    picked = []
    for name in include:
        left = positions.get(name)
        if left:
            name, value = canonical[left.pop()]
            picked.append(name + b":" + value)
    return picked


def fold(value: bytes, first: int, width: int = 76) -> bytes:
    """Fold a header value at its spaces so lines stay near `width`; `first` is the room the name takes.

    Only single spaces become line breaks, so relaxed canonicalisation reads the value unchanged.
    """
    lines: list[bytes] = []
    line = b""
    used = first
    for word in value.split(b" "):
        if line and used + 1 + len(word) > width:
            lines.append(line)
            line, used = word, 1 + len(word)
        elif line:
            line += b" " + word
            used += 1 + len(word)
        else:
            line = word
            used += len(word)
    lines.append(line)
    return b"\r\n ".join(lines)


class _Clock:
    """The t= value changes once a second; format each second once."""

    def __init__(self) -> None:
        self._second = -1
        self._text = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, str(second).encode()
        return self._text


_CLOCK = _Clock()
_NAME = b"DKIM-Signature"


class DkimSigner:
    """Signs whole messages with every configured key (RSA first, then Ed25519).

    The header block is parsed and canonicalised once for all keys, and the DKIM-Signature header is
    written directly: dkimpy's DKIM object (message parsing, tag folding, b= stripping by regular
    expression) cost more than the RSA operation itself. dkimpy still verifies every signature in the tests.
    """

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        self.keys = tuple(keys)
        # The constant tags of each key's signature, up to t=.
        self._heads = [
            b"v=1; a=%s; c=relaxed/relaxed; d=%s; i=@%s; q=dns/txt; s=%s; t="
            % (key.algorithm, key.domain.encode(), key.domain.encode(), key.selector.encode())
            for key in self.keys
        ]
        self._includes: dict[frozenset[bytes], tuple[tuple[bytes, ...], bytes]] = {}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def _include(self, present: frozenset[bytes]) -> tuple[tuple[bytes, ...], bytes]:
        """h= for a set of header names present (messages of a campaign share one)."""
        cached = self._includes.get(present)
        if cached is None:
            include = (*(name for name in SIGNED_HEADERS if name in present), b"from")
            cached = self._includes[present] = (include, b" : ".join(include))
            if len(self._includes) > 64:
                self._includes.clear()
        return cached

    def sign(self, message: bytes) -> bytes:
        """Return the message with its DKIM-Signature headers prepended (unchanged when there is no key)."""
        if not self.keys:
            return message
        # Our messages always end headers with CRLF CRLF.
        end = message.find(b"\r\n\r\n")
        if end < 0:
            raise ValueError("message has no header/body separator")
        canonical = relaxed_headers(parse_headers(message[: end + 2]))
        include, h_value = self._include(frozenset(name for name, _ in canonical))
        signed = b"".join(select_canonical(canonical, include))
        bodyhash = base64.b64encode(hashlib.sha256(relaxed_body(message[end + 4 :])).digest())
        tags = b"%s; h=%s; bh=%s; b=" % (_CLOCK.now(), h_value, bodyhash)
        signatures = []
        for key, head in zip(self.keys, self._heads, strict=True):
            unsigned = head + tags
            # The signature header is hashed relaxed, without b='s value and without its CRLF.
            digest = hashlib.sha256(signed + b"dkim-signature:" + unsigned).digest()
            b_value = base64.b64encode(key.sign_digest(digest))
            folded = fold(unsigned[:-3], len(_NAME) + 2)
            # b= on lines of its own: FWS inside it is ignored by verifiers.
            chunks = b"\r\n  ".join(b_value[i : i + 72] for i in range(0, len(b_value), 72))
            signatures.append(_NAME + b": " + folded + b"\r\n b=" + chunks + b"\r\n")
        return b"".join(signatures) + message
