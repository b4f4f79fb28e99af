"""Certificates for development servers and tests (never for production): self-signed ones for the console and
the SMTP catcher, and a small CA issuing the services' mutual-TLS certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The console makes its own when none is configured; the catcher and the tests' SMTP sink use the same.
from services.gateway.certificate import make_self_signed as make_self_signed


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start (and replaced whole), so a key is never readable by others, even briefly.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def make_ca(directory: Path, name: str = "mailblast development CA", days: int = 3650) -> tuple[Path, Path]:
    """Write ca.crt and ca.key (0600) of a CA that issues mailblast's service certificates; reuse existing ones."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _pkcs8(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _still_good(cert_path: Path, ca: x509.Certificate, sans: x509.SubjectAlternativeName, days_left: int) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca)
        current = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=days_left)
    return fresh and set(current) == set(sans)


def issue_certificate(
    ca_dir: Path,
    directory: Path,
    identity: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = 825,
) -> Path:
    """Write tls.crt, tls.key (0600) and ca.crt for a mailblast identity into directory, signed by the CA in ca_dir.

    The certificate names the identity as its one URI SAN (spiffe://mailblast/<identity>), serves as
    client and, with DNS names or addresses, as server certificate. One that still fits (same CA, same
    names, more than 30 days left) is kept. Returns the directory.
    """
    from services.common.identity import certificate_identity_uri

    ca_cert_path, ca_key_path = ca_dir / "ca.crt", ca_dir / "ca.key"
    ca = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    sans = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(certificate_identity_uri(identity)),
            *(x509.DNSName(name) for name in dns_names),
            *(x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses),
        ]
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path, bundle_path = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    ca_pem = ca_cert_path.read_bytes()
    if key_path.exists() and _still_good(cert_path, ca, sans, days_left=30):
        if not bundle_path.exists() or bundle_path.read_bytes() != ca_pem:
            _write_private(bundle_path, ca_pem)
        return directory
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if dns_names or ip_addresses:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(sans, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # Certificates are public, but under var/secrets every file is 0600 alike.
    _write_private(key_path, _pkcs8(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write_private(bundle_path, ca_pem)
    return directory
