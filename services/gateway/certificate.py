"""The console's HTTPS certificate: the configured pair, or a self-signed one made once (development)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common.settings import ConfigError
from services.gateway.config import Config


def console_certificate(config: Config) -> tuple[Path, Path]:
    """The certificate and key to serve: the configured ones, else a self-signed pair made once."""
    if config.tls_cert_file or config.tls_key_file:
        if not (config.tls_cert_file and config.tls_key_file):
            raise ConfigError("set both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE, or neither")
        return Path(config.tls_cert_file), Path(config.tls_key_file)
    directory = Path(config.tls_dir) if config.tls_dir else Path(tempfile.gettempdir()) / "mailblast-gateway-tls"
    return make_self_signed(directory, "localhost")


def make_self_signed(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """Write cert.pem and key.pem (mode 0600) for hostname and 127.0.0.1 into directory; reuse existing ones."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
