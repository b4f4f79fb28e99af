"""`python -m dev.run` (what `make run` starts) as a real process tree, started, checked and stopped."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats.aio.client
import nats.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.nats_credentials import SERVICES
from dev.embedded import free_port
from dev.run import GRPC_CLIENTS, GRPC_SERVICES

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"mailblast is ready: (https://\S+)")
TOKEN_LINE = "admin API token"
START_DEADLINE = 240.0


def processes_of(var: Path) -> set[int]:
    """Live processes started for this data folder: they inherit MAILBLAST_VAR_DIR=var, even once orphaned."""
    marker = f"MAILBLAST_VAR_DIR={var}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while pid is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class DevRun:
    """A running `python -m dev.run` with its console output collected line by line."""

    process: subprocess.Popen
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue = field(default_factory=queue.Queue)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_ready(self, timeout: float = START_DEADLINE) -> str:
        """Wait for the 'ready' line and return the gateway URL; fail with the console output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            found = READY.search(line)
            if found:
                return found.group(1)
        raise AssertionError(f"dev.run did not become ready:\n{self.output()}")

    def output(self) -> str:
        """Console output so far (stdout and stderr)."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines) + self.stderr_path.read_text(errors="replace")

    def interrupt(self, timeout: float = 90.0) -> int:
        """Ctrl-C: SIGINT to the whole process group, as a terminal does; return the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A folder for dev.run's var/, outside pytest's 0700 temp root: as root, PostgreSQL runs as an
    unprivileged user that must reach it, and another pytest session may tighten that root at any time."""
    path = Path(tempfile.mkdtemp(prefix="mailblast-devrun-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_devrun(data_dir: Path) -> Iterator:
    """Starts dev.run with its data under data_dir/var; kills whatever is left at the end."""

    started: list[DevRun] = []

    def start(**extra_env: str) -> DevRun:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "NATS_URL", "SENDER_"))}
        env.pop("MAILBLAST_INTERNAL_KEY", None)
        env.update(
            MAILBLAST_VAR_DIR=str(data_dir / "var"),
            GATEWAY_BIND=f"127.0.0.1:{free_port()}",
            MAILBLAST_START_TIMEOUT="180",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra_env)
        stderr_path = data_dir / f"devrun-{len(started)}.stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dev.run"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        run = DevRun(proc, stderr_path)
        threading.Thread(target=run._read, daemon=True).start()
        started.append(run)
        return run

    yield start
    for run in started:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait(10)
        if run.process.stdout is not None:
            run.process.stdout.close()


def _grpc_serving(address: str, run_info: dict) -> bool:
    # Over mutual TLS, with the `mailblast` command's certificate that run.json points at.
    files = {key: Path(path).read_bytes() for key, path in run_info["cli_tls"].items()}
    credentials = grpc.ssl_channel_credentials(files["ca_file"], files["key_file"], files["cert_file"])
    with grpc.secure_channel(address, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _check_everything_serves(var: Path, gateway_url: str) -> dict:
    run_info = json.loads((var / "run.json").read_text())
    addresses = [run_info["auth"], run_info["lists"], run_info["campaigns"], run_info["bounce"], *run_info["sender"]]
    assert len(run_info["sender"]) == 2
    for address in addresses:
        assert _grpc_serving(address, run_info), address
        # Nothing answers in plaintext: not even the health service.
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as plain:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    assert run_info["gateway"] == gateway_url
    # The console serves HTTPS with the development certificate made on the first run.
    tls = ssl.create_default_context(cafile=str(var / "secrets" / "tls" / "cert.pem"))
    with urllib.request.urlopen(f"{gateway_url}healthz", timeout=10, context=tls) as response:  # noqa: S310
        assert json.loads(response.read()) == {"status": "ok"}
    return run_info


def test_make_run_starts_everything_stops_cleanly_and_keeps_data(start_devrun, data_dir: Path) -> None:
    # On a machine with no database, broker or relay, dev.run starts embedded PostgreSQL and NATS, an SMTP
    # catcher and every service; all answer healthy, the admin token is printed once and nowhere written.
    # Logs and caught mail are private (0600 in 0700 folders); the plain-HTTP port redirects to the console's
    # address. Ctrl-C stops the whole tree with exit 0. A second run finds the same secrets and the admin.
    var = data_dir / "var"
    http_port = free_port()
    first = start_devrun(GATEWAY_HTTP_BIND=f"127.0.0.1:{http_port}")
    gateway_url = first.wait_ready()
    run_info = _check_everything_serves(var, gateway_url)
    # The plain-HTTP port redirects to the console's own address, whatever Host the client claims.
    plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    plain.request("GET", "/lists?page=2", headers={"Host": "evil.example"})
    assert plain.getresponse().headers["Location"] == f"{gateway_url}lists?page=2"
    plain.close()
    assert run_info["embedded"] == {"postgres": True, "nats": True, "catcher": True}
    assert run_info["postgres"].startswith("127.0.0.1:")
    assert run_info["nats"].startswith("nats://127.0.0.1:")
    assert Path(run_info["outbox"]) == var / "outbox"
    tree = processes_of(var)
    assert len(tree) >= 10, "dev.run, 7 service processes, PostgreSQL and NATS"

    output = first.output()
    token_lines = [line for line in output.splitlines() if TOKEN_LINE in line]
    assert len(token_lines) == 1, output
    token = token_lines[0].rsplit(" ", 1)[1]
    assert len(token) >= 16
    [login_line] = [line for line in output.splitlines() if line.startswith("console login: admin")]
    password = login_line.split("password: ", 1)[1].split()[0]
    _check_console_password(var, run_info["auth"], password)
    assert 'mb1._domainkey.mailblast.example.com. IN TXT "v=DKIM1; k=rsa; p=' in output
    assert 'mb1ed._domainkey.mailblast.example.com. IN TXT "v=DKIM1; k=ed25519; p=' in output

    # The token and the secrets stay out of every file the run writes besides the secrets themselves.
    internal_key = (var / "secrets" / "internal.key").read_bytes().strip()
    totp_key = (var / "secrets" / "totp.keys").read_bytes().strip()
    for path in [*(var / "logs").iterdir(), var / "run.json"]:
        content = path.read_bytes()
        assert token.encode() not in content, path
        assert password.encode() not in content, path
        assert internal_key not in content, path
        assert totp_key not in content, path
    assert internal_key.decode() not in output and totp_key.decode() not in output
    # The embedded NATS refuses a client without credentials; the NATS seeds stay out of logs and console.
    assert _nats_refuses_anonymous(run_info["nats"])
    authority = json.loads((var / "secrets" / "nats" / "authority.json").read_text())
    creds = [p.read_text() for p in (var / "secrets" / "nats").glob("*.creds")]
    creds_seeds = [line for text in creds for line in text.splitlines() if line.startswith("SU")]
    assert len(creds_seeds) == len(SERVICES)
    for seed in [*authority.values(), *creds_seeds]:
        assert seed not in output
        for path in [*(var / "logs").iterdir(), var / "run.json"]:
            assert seed.encode() not in path.read_bytes(), path
    # Logs and caught mail (invitation and reset links) are for the owner of the folder alone.
    for folder in ("logs", "outbox"):
        assert (var / folder).stat().st_mode & 0o777 == 0o700, folder
    logs = sorted((var / "logs").iterdir())
    assert {p.name for p in logs} >= {"auth.log", "gateway.log", "postgres.log", "nats.log", "sender-1.log"}
    for path in logs:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert (var / "secrets").stat().st_mode & 0o777 == 0o700
    secret_files = [p for p in (var / "secrets").rglob("*") if p.is_file()]
    # The six secrets; the gRPC CA (certificate and key) with each identity's tls.crt, tls.key, ca.crt;
    # the NATS authority, signing key and server.conf with one .creds per service.
    assert len(secret_files) == 6 + 2 + 3 * len(GRPC_SERVICES + GRPC_CLIENTS) + 3 + len(SERVICES)
    for path in secret_files:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert run_info["cli_tls"] == {
        "ca_file": str(var / "secrets" / "grpc" / "cli" / "ca.crt"),
        "cert_file": str(var / "secrets" / "grpc" / "cli" / "tls.crt"),
        "key_file": str(var / "secrets" / "grpc" / "cli" / "tls.key"),
    }
    private_keys = [p.read_bytes() for p in secret_files if p.suffix == ".key"]
    for path in [*(var / "logs").iterdir(), var / "run.json"]:
        content = path.read_bytes()
        assert not any(key.strip() in content for key in private_keys), path
    assert not any(key.strip().decode() in output for key in private_keys)
    secrets_before = {p: p.read_bytes() for p in secret_files}

    assert first.interrupt() == 0, first.output()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in tree if alive(pid)] == []
    assert not (var / "run.json").exists()

    # A log left readable by others (say, by an older version) is made private again on the next run.
    (var / "logs" / "auth.log").chmod(0o644)
    (var / "logs").chmod(0o755)
    second = start_devrun()
    gateway_url = second.wait_ready()
    _check_everything_serves(var, gateway_url)
    assert (var / "logs" / "auth.log").stat().st_mode & 0o777 == 0o600
    assert (var / "logs").stat().st_mode & 0o777 == 0o700
    output = second.output()
    assert TOKEN_LINE not in output
    assert token not in output and password not in output
    assert "the admin 'admin' exists" in output
    assert {p: p.read_bytes() for p in secret_files} == secrets_before
    tree = processes_of(var)
    assert second.interrupt() == 0, second.output()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in tree if alive(pid)] == []


def test_a_service_that_cannot_start_stops_everything_with_its_log(start_devrun, data_dir: Path) -> None:
    # When the services cannot reach the database they were given, dev.run shows the failing service's
    # log, stops everything it started (NATS, the catcher, the other services) and exits non-zero.
    closed_port = free_port()
    run = start_devrun(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port}/mailblast")
    code = run.process.wait(START_DEADLINE)
    output = run.output()
    assert code == 1, output
    assert "mailblast could not run" in output
    assert "last lines of" in output
    assert "mailblast is ready" not in output
    assert processes_of(data_dir / "var") == set()


def _wait_output(run: DevRun, pattern: str, timeout: float = 60.0) -> re.Match:
    """The first match of `pattern` in dev.run's console output, polling until it appears."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, run.output())
        if found:
            return found
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{run.output()}"
        time.sleep(0.2)


def test_a_service_that_dies_is_started_again_with_a_growing_delay(start_devrun, data_dir: Path) -> None:
    # A sender killed under `make run` is started again at once, on its address, and says so on the console
    # (its exit code, how long it ran, the delay, the restart count, the last lines of its log); killed
    # again right after, it comes back after a second's delay. The rest keeps running, and Ctrl-C still
    # stops everything with exit 0.
    run = start_devrun()
    run.wait_ready()
    run_info = json.loads((data_dir / "var" / "run.json").read_text())
    address = run_info["sender"][0]
    pid = int(_wait_output(run, r"(?m)^sender-1\s+(\d+)\s").group(1))
    os.kill(pid, signal.SIGKILL)
    _wait_output(run, r"sender-1 exited with code -9 after \d+s; restarting it in 0s \(restart 1\)")
    again = int(_wait_output(run, r"sender-1 started again \(pid (\d+), restart 1\)").group(1))
    assert again != pid and alive(again)
    deadline = time.monotonic() + 60
    while not _serving_now(address, run_info):
        assert time.monotonic() < deadline, "the restarted sender does not answer"
        time.sleep(0.2)
    os.kill(again, signal.SIGKILL)
    _wait_output(run, r"sender-1 exited with code -9 after \d+s; restarting it in 1s \(restart 2\)")
    third = int(_wait_output(run, r"sender-1 started again \(pid (\d+), restart 2\)").group(1))
    assert alive(third)
    assert _grpc_serving(run_info["lists"], run_info)
    assert run.interrupt() == 0
    assert processes_of(data_dir / "var") == set()


def _serving_now(address: str, run_info: dict) -> bool:
    try:
        return _grpc_serving(address, run_info)
    except grpc.RpcError:
        return False


def _nats_refuses_anonymous(url: str) -> bool:
    """True when the NATS server at url refuses a client that brings no credentials."""

    async def attempt() -> bool:
        client = nats.aio.client.Client()
        try:
            await client.connect(url, allow_reconnect=False, connect_timeout=10)
        except nats.errors.Error as exc:
            return "Authorization Violation" in str(exc)
        finally:
            await client.close()
        return False

    return asyncio.run(attempt())


def _check_console_password(var: Path, auth_address: str, password: str) -> None:
    """The printed password logs the admin in (asked of auth as the console would)."""
    import grpc
    from mailblast.v1 import auth_pb2, auth_pb2_grpc

    from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
    from services.common.rpc import TlsFiles

    signer = IdentitySigner((var / "secrets" / "internal.key").read_bytes().strip())
    console = TlsFiles.in_directory(var / "secrets" / "grpc" / "gateway")
    with grpc.secure_channel(auth_address, console.channel_credentials()) as channel:
        reply = auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(login="admin", password=password, source_ip="127.0.0.1"),
            metadata=[(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service="gateway"), "auth"))],
            timeout=30,
        )
    assert reply.status == auth_pb2.LOGIN_STATUS_OK
