"""The development CA and certificates `make run` makes for mutual TLS between the processes."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

from cryptography import x509

from dev.run import GRPC_CLIENTS, GRPC_SERVICES, ensure_grpc_certificates


def _names(path: str) -> tuple[list[str], list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        sans.get_values_for_type(x509.UniformResourceIdentifier),
        sans.get_values_for_type(x509.DNSName),
        [str(a) for a in sans.get_values_for_type(x509.IPAddress)],
    )


def test_each_process_gets_its_own_certificate_once_privately(tmp_path: Path) -> None:
    # Every service and client gets a certificate naming it (spiffe://mailblast/<name>) from one CA;
    # services' are valid for 127.0.0.1, localhost and their Kubernetes Service name, clients' for no host.
    # Every file is 0600 in a 0700 folder, and a second run keeps them all unchanged.
    directory = tmp_path / "grpc"
    files = ensure_grpc_certificates(directory)
    assert set(files) == {*GRPC_SERVICES, *GRPC_CLIENTS}
    assert directory.stat().st_mode & 0o777 == 0o700
    written = [p for p in directory.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_mode & 0o777 == 0o600 for p in written)
    ca = (directory / "ca" / "ca.crt").read_bytes()
    for name, tls in files.items():
        assert tls.identity() == name
        assert Path(tls.ca_file).read_bytes() == ca
        uris, dns, ips = _names(tls.cert_file)
        assert uris == [f"spiffe://mailblast/{name}"]
        if name in GRPC_SERVICES:
            assert (set(dns), ips) == ({name, "localhost"}, [str(ipaddress.ip_address("127.0.0.1"))])
        else:
            assert (dns, ips) == ([], [])
    before = {p: p.read_bytes() for p in written}
    ensure_grpc_certificates(directory)
    assert {p: p.read_bytes() for p in written} == before


def test_a_new_ca_reissues_every_certificate(tmp_path: Path) -> None:
    # When the CA is replaced (its folder removed), the next run issues every certificate again from the
    # new CA, so no process is left with a certificate the others no longer trust.
    directory = tmp_path / "grpc"
    old = ensure_grpc_certificates(directory)
    old_cert = Path(old["auth"].cert_file).read_bytes()
    shutil.rmtree(directory / "ca")
    new = ensure_grpc_certificates(directory)
    assert Path(new["auth"].cert_file).read_bytes() != old_cert
    ca = x509.load_pem_x509_certificate((directory / "ca" / "ca.crt").read_bytes())
    for tls in new.values():
        x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes()).verify_directly_issued_by(ca)
        assert Path(tls.ca_file).read_bytes() == (directory / "ca" / "ca.crt").read_bytes()
