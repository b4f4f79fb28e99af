"""The development secrets `make run` creates: made once, private, and the DNS records that match them."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from dev.embedded import open_private_log
from dev.run import (
    Supervisor,
    dkim_dns_records,
    ensure_grpc_certificates,
    ensure_secrets,
    read_internal_key,
    var_dir,
)
from services.common import settings
from services.common.identity import IdentitySigner, Principal
from services.common.sealing import parse_keys
from tests.support.dkim_verify import ED25519, RSA, passing, verify_everywhere

MESSAGE = (
    b"From: Shop <news@mailblast.example.com>\r\nTo: a@example.com\r\nSubject: hello\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@mailblast.example.com>\r\n\r\nHi there.\r\n"
)


def _txt_value(record: str) -> bytes:
    # Join the record's character-strings as a resolver does.
    return "".join(re.findall(r'"([^"]*)"', record)).encode()


def test_secrets_are_created_once_and_private(tmp_path: Path) -> None:
    # The first run creates every secret with mode 0600 in a 0700 folder; a second run reuses them unchanged.
    files, created = ensure_secrets(tmp_path / "secrets")
    assert created
    paths = [files.internal_key, files.totp_keys, files.dkim_rsa, files.dkim_ed25519, files.tls_cert, files.tls_key]
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o600, path
    before = {path: path.read_bytes() for path in paths}
    again, created_again = ensure_secrets(tmp_path / "secrets")
    assert again == files
    assert not created_again
    assert {path: path.read_bytes() for path in paths} == before


def test_keys_have_the_promised_kinds(tmp_path: Path) -> None:
    # The internal key carries 32 random bytes; the TOTP key is one Fernet key, as auth reads it; DKIM keys
    # are PKCS#8 PEM, RSA-2048 for mb1 and ed25519 for mb1ed.
    files, _ = ensure_secrets(tmp_path / "secrets")
    key = read_internal_key(files.internal_key)
    assert len(bytes.fromhex(key.decode())) == 32
    assert len(parse_keys(files.totp_keys.read_text())) == 1
    rsa_pem = files.dkim_rsa.read_bytes()
    assert rsa_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    rsa_key = serialization.load_pem_private_key(rsa_pem, password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size == 2048
    ed_pem = files.dkim_ed25519.read_bytes()
    assert ed_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert isinstance(serialization.load_pem_private_key(ed_pem, password=None), ed25519.Ed25519PrivateKey)


def test_services_read_the_internal_key_file_as_dev_run_signs_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service reading MAILBLAST_INTERNAL_KEY_FILE accepts the identity dev.run signs for its bootstrap call.
    files, _ = ensure_secrets(tmp_path / "secrets")
    monkeypatch.delenv("MAILBLAST_INTERNAL_KEY", raising=False)
    monkeypatch.setenv("MAILBLAST_INTERNAL_KEY_FILE", str(files.internal_key))
    service_side = IdentitySigner(settings.read_setting(settings.INTERNAL_KEY, bytes))
    assertion = IdentitySigner(read_internal_key(files.internal_key)).sign(Principal(0, service="dev-run"), "auth")
    assert service_side.verify(assertion, "auth").service == "dev-run"


def test_printed_dns_records_verify_signatures_made_with_the_keys(tmp_path: Path, dns_server) -> None:
    # The printed TXT records, loaded as zone-file lines into a DNS server, let a receiver verify a message
    # signed with the RSA key (dkimpy and Mail::DKIM) and one signed with the ed25519 key (dkimpy and
    # OpenDKIM); the ed25519 record holds the raw public key of the ed25519 file. Neither record reveals a
    # private key.
    files, _ = ensure_secrets(tmp_path / "secrets")
    records = dkim_dns_records(files)
    by_name = {record.split(" ", 1)[0]: record for record in records}
    assert set(by_name) == {"mb1._domainkey.mailblast.example.com.", "mb1ed._domainkey.mailblast.example.com."}
    dns_server.add_zone("mailblast.example.com")
    for record in records:
        assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', record))
        assert "PRIVATE" not in record
        name, _, strings = record.partition(" IN TXT ")
        dns_server.add(name, "TXT", strings)

    rsa_signed = dkim.sign(MESSAGE, b"mb1", b"mailblast.example.com", files.dkim_rsa.read_bytes()) + MESSAGE
    private = serialization.load_pem_private_key(files.dkim_ed25519.read_bytes(), password=None)
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    ed_signed = (
        dkim.sign(
            MESSAGE,
            b"mb1ed",
            b"mailblast.example.com",
            base64.b64encode(seed),
            signature_algorithm=b"ed25519-sha256",
        )
        + MESSAGE
    )
    by_rsa, by_ed = verify_everywhere([rsa_signed, ed_signed], dns_server)
    assert passing(by_rsa) == {("dkimpy", RSA), ("Mail::DKIM", RSA)}, by_rsa
    assert passing(by_ed) == {("dkimpy", ED25519), ("OpenDKIM", ED25519)}, by_ed

    ed_value = _txt_value(by_name["mb1ed._domainkey.mailblast.example.com."]).decode()
    published = ed_value.split("p=", 1)[1]
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64decode(published) == raw
    assert "k=ed25519" in ed_value


def test_data_folder_is_var_in_the_project_unless_moved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Without MAILBLAST_VAR_DIR the data lives in var/ at the project root (ignored by git); the variable moves it.
    monkeypatch.delenv("MAILBLAST_VAR_DIR", raising=False)
    assert var_dir() == Path(__file__).resolve().parents[2] / "var"
    monkeypatch.setenv("MAILBLAST_VAR_DIR", str(tmp_path / "elsewhere"))
    assert var_dir() == tmp_path / "elsewhere"


def test_logs_are_private_and_the_console_redirects_to_its_own_address(tmp_path: Path) -> None:
    # make run's logs are created readable by their owner only, and an older log readable by others is
    # tightened when opened again; the gateway it plans redirects plain HTTP to the console's address.
    fresh = tmp_path / "fresh.log"
    with open_private_log(fresh) as log:
        log.write(b"one\n")
    older = tmp_path / "older.log"
    older.write_bytes(b"before\n")
    older.chmod(0o644)
    with open_private_log(older) as log:
        log.write(b"after\n")
    assert fresh.stat().st_mode & 0o777 == 0o600 and older.stat().st_mode & 0o777 == 0o600
    assert older.read_bytes() == b"before\nafter\n"

    files, _ = ensure_secrets(tmp_path / "secrets")
    supervisor = Supervisor(tmp_path / "var")
    supervisor.grpc_tls = ensure_grpc_certificates(tmp_path / "secrets" / "grpc")
    supervisor.plan_services("postgresql://db", "nats://bus", files, {}, "0.0.0.0:8443")
    gateway = next(svc for svc in supervisor.services if svc.name == "gateway")
    assert gateway.env["GATEWAY_PUBLIC_URL"] == "https://127.0.0.1:8443"
    assert gateway.env["AUTH_CONSOLE_URL"] == "https://127.0.0.1:8443"
