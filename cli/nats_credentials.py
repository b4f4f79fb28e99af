"""NATS credentials in the decentralised JWT model: an operator, a system account and the mailblast account.

The operator signs the two account JWTs, which the server holds in its memory resolver (server.conf);
the mailblast account (JetStream enabled) names a signing key, and that key signs every user JWT.
A credential for a new application can therefore be issued at any time, from the signing key
alone, without touching the server's configuration.

The one NATS JWT library for Python says of itself that it is not well tested and pulls in four
more dependencies; a NATS JWT is a plain JWS (header, claims, ed25519 signature, base64url), so the
claims are encoded here and signed with nkeys, nats-io's own key library.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys

from services.common import bus

ACCOUNT_NAME = "mailblast"
SERVICES = tuple(bus.SERVICE_ACCESS)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
_JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_seed(prefix: int) -> str:
    """A fresh nkey seed for an operator, account or user (prefix from nkeys.PREFIX_BYTE_*)."""
    return nkeys.encode_seed(secrets.token_bytes(32), prefix).decode()


def public_key(seed: str) -> str:
    """The public key of an nkey seed."""
    return nkeys.from_seed(seed.encode()).public_key.decode()


def encode_jwt(subject: str, name: str, signer_seed: str, nats_claims: dict, tags: list[str] | None = None) -> str:
    """A NATS JWT for subject, signed by the seed's key (the issuer)."""
    signer = nkeys.from_seed(signer_seed.encode())
    claims = {"iat": int(time.time()), "iss": signer.public_key.decode(), "name": name, "sub": subject}
    # The id is a hash of the standard claims, as nats-io/jwt makes it.
    claims["jti"] = base64.b32encode(hashlib.new("sha512_256", _compact(claims)).digest()).rstrip(b"=").decode()
    body = {**nats_claims, **({"tags": tags} if tags else {}), "version": 2}
    claims["nats"] = body
    signing_input = f"{_b64(_compact(_HEADER))}.{_b64(_compact(claims))}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def _compact(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def creds_text(user_jwt: str, user_seed: str) -> str:
    """A .creds file: the user JWT and its seed, in the layout nats clients read."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def write_secret(path: Path, text: str) -> None:
    """Replace path with text, readable by its owner only from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


@dataclass(frozen=True)
class Issuer:
    """The mailblast account's public key and the signing key that signs its users."""

    account: str
    signing_seed: str

    @classmethod
    def load(cls, path: Path) -> Issuer:
        """Read a signing-key file written by `mailblast nats init` (or make run)."""
        data = json.loads(path.read_text())
        return cls(account=data["account"], signing_seed=data["signing_seed"])

    def dumps(self) -> str:
        """The signing-key file's text."""
        return json.dumps({"account": self.account, "signing_seed": self.signing_seed}, indent=2) + "\n"

    def issue(
        self, name: str, publish: list[str], tags: list[str] | None = None, subscribe: list[str] | None = None
    ) -> tuple[str, str]:
        """A new user allowed to publish these subjects and to receive on its own inbox: (.creds text, user key)."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"credential name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        seed = new_seed(nkeys.PREFIX_BYTE_USER)
        user = public_key(seed)
        claims = {
            "pub": {"allow": publish},
            # Replies (JetStream acks, pull-consumer deliveries) arrive on inboxes: each credential
            # reads only its own, so no client can read another's.
            "sub": {"allow": [f"{bus.inbox_prefix(user)}.>", *(subscribe or [])]},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "issuer_account": self.account,
            "type": "user",
        }
        return creds_text(encode_jwt(user, name, self.signing_seed, claims, tags), seed), user

    def service(self, service: str) -> str:
        """The .creds text of one mailblast service: exactly the subjects DEVELOPERS.md's NATS table gives it."""
        return self.issue(service, bus.SERVICE_ACCESS[service].publish_allow())[0]

    def application(self, organization_id: int, name: str) -> tuple[str, str]:
        """An application's credential: publish its organisation's transactional mail, nothing else."""
        subject = bus.transactional_subject(organization_id)
        return self.issue(name, [subject], tags=[f"organization:{organization_id}"])


@dataclass(frozen=True)
class Authority:
    """The seeds at the root of trust: operator, system account, mailblast account and its signing key."""

    operator: str
    system: str
    account: str
    signing: str

    @classmethod
    def generate(cls) -> Authority:
        """New keys for a new installation."""
        return cls(
            operator=new_seed(nkeys.PREFIX_BYTE_OPERATOR),
            system=new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            account=new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            signing=new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
        )

    @classmethod
    def load(cls, path: Path) -> Authority:
        """Read authority.json."""
        data = json.loads(path.read_text())
        return cls(data["operator"], data["system"], data["account"], data["signing"])

    def dumps(self) -> str:
        """authority.json's text."""
        fields = {"operator": self.operator, "system": self.system, "account": self.account, "signing": self.signing}
        return json.dumps(fields, indent=2) + "\n"

    @property
    def issuer(self) -> Issuer:
        """What issuing user credentials needs."""
        return Issuer(public_key(self.account), self.signing)

    def server_config(self) -> str:
        """The nats-server settings that trust this operator and preload both accounts (no secrets)."""
        operator, system, account = public_key(self.operator), public_key(self.system), public_key(self.account)
        operator_jwt = encode_jwt(operator, "mailblast", self.operator, {"system_account": system, "type": "operator"})
        system_jwt = encode_jwt(system, "SYS", self.operator, {"limits": {**_UNLIMITED, "leaf": -1}, "type": "account"})
        account_jwt = encode_jwt(
            account,
            ACCOUNT_NAME,
            self.operator,
            {
                "limits": {**_UNLIMITED, "leaf": -1, **_JETSTREAM},
                "signing_keys": [public_key(self.signing)],
                "type": "account",
            },
        )
        return (
            "# mailblast's NATS trust: written by `mailblast nats init` / make run. Public keys and JWTs only.\n"
            f'operator: "{operator_jwt}"\n'
            f'system_account: "{system}"\n'
            # A client's CONNECT carries its user JWT, whose permission table (bus.SERVICE_ACCESS) outgrows the
            # default 4 KiB line of the sender's many durables.
            "max_control_line: 16384\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f'  "{system}": "{system_jwt}"\n'
            f'  "{account}": "{account_jwt}"\n'
            "}\n"
        )


@dataclass(frozen=True)
class Setup:
    """Where an installation's NATS trust lives: the files `init` writes into one folder."""

    directory: Path

    @property
    def authority_file(self) -> Path:
        """Every seed: keep offline in production."""
        return self.directory / "authority.json"

    @property
    def signing_key_file(self) -> Path:
        """What `mailblast nats issue-credential` needs."""
        return self.directory / "signing-key.json"

    @property
    def server_config_file(self) -> Path:
        """The nats-server settings to include."""
        return self.directory / "server.conf"

    def creds_file(self, service: str) -> Path:
        """One service's credential."""
        return self.directory / f"{service}.creds"


def init(directory: Path) -> Setup:
    """Create the keys, the server settings and every service's credential once; return where they are.

    A service's credential is issued again when its permissions differ from what this release's
    code gives that service (bus.SERVICE_ACCESS), so an upgrade never runs on stale permissions.
    Application credentials stay valid as long as the signing key does.
    """
    setup = Setup(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if setup.authority_file.exists():
        authority = Authority.load(setup.authority_file)
    else:
        authority = Authority.generate()
        write_secret(setup.authority_file, authority.dumps())
    issuer = authority.issuer
    if not setup.signing_key_file.exists():
        write_secret(setup.signing_key_file, issuer.dumps())
    if not setup.server_config_file.exists() or "max_control_line" not in setup.server_config_file.read_text():
        # Also a server.conf written before the control-line limit was raised: the same trust, rewritten.
        write_secret(setup.server_config_file, authority.server_config())
    for service in SERVICES:
        path = setup.creds_file(service)
        wanted = bus.SERVICE_ACCESS[service].publish_allow()
        if not path.exists() or _granted(path.read_text()) != (issuer.account, wanted):
            write_secret(path, issuer.service(service))
    return setup


def user_claims(creds: str) -> dict:
    """The claims of the user JWT in a .creds file's text (not verified: the server does that)."""
    lines = creds.splitlines()
    token = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1].strip()
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _granted(creds: str) -> tuple[str, list[str]]:
    try:
        claims = user_claims(creds)["nats"]
        return claims["issuer_account"], claims["pub"]["allow"]
    except (ValueError, IndexError, KeyError):
        return "", []
