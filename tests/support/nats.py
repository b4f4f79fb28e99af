"""A NATS server for tests with mailblast's authentication on: every service gets its own credential."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nats as nats_client
from nats.aio.client import Client

from cli.nats_credentials import Issuer, Setup, write_secret
from services.common import bus

# Tests that watch streams (reports, dead letters) or play a part no service plays use this one.
ADMIN = "admin"


@dataclass
class NatsServer:
    """A running nats-server that trusts `setup`'s operator: its URL, and credentials by name."""

    url: str
    setup: Setup
    _issued: dict[str, str] = field(default_factory=dict)

    def creds(self, name: str) -> str:
        """The .creds file of a service (auth, lists, campaigns, sender, bounce), or of 'admin' (allowed everything)."""
        if name == ADMIN and name not in self._issued:
            path = self.setup.directory / "admin.creds"
            if not path.exists():
                write_secret(path, self.issuer.issue(ADMIN, [">"], subscribe=[">"])[0])
            self._issued[name] = str(path)
        return self._issued.get(name) or str(self.setup.creds_file(name))

    @property
    def issuer(self) -> Issuer:
        """The account's signing key, to issue more credentials (an application's)."""
        return Issuer.load(self.setup.signing_key_file)

    @property
    def signing_key_file(self) -> Path:
        """What `mailblast nats issue-credential --signing-key` reads."""
        return self.setup.signing_key_file

    async def connect(self, name: str = ADMIN, **options) -> Client:
        """A client connected with the named credential (and its own inbox prefix)."""
        return await connect_with(self.url, self.creds(name), **options)


async def connect_with(url: str, creds: str, **options) -> Client:
    """Connect with a .creds file the way the services do: replies on the credential's own inbox."""
    prefix = bus.inbox_prefix(bus.credential_user_key(creds))
    return await nats_client.connect(url, user_credentials=creds, inbox_prefix=prefix, **options)
