"""A test CA for the services' mutual TLS: certificates for any identity, and channels that present them."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import grpc

from dev.tls import issue_certificate, make_ca
from services.common.rpc import TLS_SETTINGS, ServiceIdentity, TlsFiles

SERVICES = ("auth", "lists", "campaigns", "sender", "bounce")


class TestPki:
    """Issues certificates for mailblast identities from one CA (EC keys, made once per session)."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._issued: dict[str, TlsFiles] = {}
        make_ca(directory / "ca", name="mailblast test CA")

    def tls(self, identity: str) -> TlsFiles:
        """The certificate files of an identity; a service's are valid for 127.0.0.1 and localhost."""
        if identity not in self._issued:
            server = identity in SERVICES
            issued = issue_certificate(
                self.directory / "ca",
                self.directory / identity,
                identity,
                ("localhost",) if server else (),
                ("127.0.0.1",) if server else (),
            )
            self._issued[identity] = TlsFiles.in_directory(issued)
        return self._issued[identity]

    def env(self, identity: str) -> dict[str, str]:
        """The MAILBLAST_TLS_* settings of a process holding `identity`'s certificate."""
        files = self.tls(identity)
        return dict(zip(TLS_SETTINGS, (files.ca_file, files.cert_file, files.key_file), strict=True))

    def identity(self, identity: str, internal_key: bytes) -> ServiceIdentity:
        """The identity a process of that name holds: its certificate and its assertion signer."""
        return ServiceIdentity(identity, self.tls(identity), internal_key)

    def channel(self, target: int | str, identity: str = "cli") -> grpc.aio.Channel:
        """A channel to a service (a port on 127.0.0.1, or host:port) that presents `identity`'s certificate."""
        address = f"127.0.0.1:{target}" if isinstance(target, int) else target
        return grpc.aio.secure_channel(address, self.tls(identity).channel_credentials())


_default: TestPki | None = None


def default_pki() -> TestPki:
    """The test session's CA (made on first use, removed at exit): what start_stack and start_console use."""
    global _default
    if _default is None:
        directory = Path(tempfile.mkdtemp(prefix="mailblast-test-pki-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _default = TestPki(directory)
    return _default
