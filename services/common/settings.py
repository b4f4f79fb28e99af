"""Settings declared once: each is a dataclass field naming its environment variable, default and doc.

A program's settings are one frozen dataclass whose fields are declared with `setting`:

    concurrency: int = setting("SENDER_CONCURRENCY", 64, "deliveries at once per process")
    database_url: str = DATABASE_URL.field()     # shared by several services: declared once, below

`read(Config)` fills every field from the environment and parses it by the field's type (str, int, float,
bool, bytes, tuple[str, ...], `X | None`) or with the setting's own `parse`. A field whose type is itself a
dataclass of settings (`rpc.TlsFiles`) is read the same way from that class's variables; a field without a
setting (a switch for tests) keeps its default. An empty variable counts as unset. A secret comes from VAR
or from the file VAR_FILE names, and is left out of every error and repr. Every error names the variable.
`markdown_table` writes DEVELOPERS.md's settings table from these declarations (`make docs`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from services.common.sealing import parse_keys

T = TypeVar("T")

_METADATA_KEY = "mailblast.setting"
_SAME: Any = object()


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


# The default of a setting that has none: the variable must be set.
REQUIRED: Any = _Required()


class ConfigError(Exception):
    """A required setting is missing or malformed; the message names it."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One environment variable: its name, its default (none: required), a one-line doc, how it is parsed."""

    env: str
    default: Any = REQUIRED
    doc: str = ""
    secret: bool = False
    # Turns the variable's text into the field's value; a ValueError's text says what is wrong with it.
    parse: Callable[[str], Any] | None = None

    @property
    def required(self) -> bool:
        """True when the variable must be set (the setting has no default)."""
        return self.default is REQUIRED

    def field(self, default: Any = _SAME, *, required: bool = False) -> Any:
        """A dataclass field read from this setting; one user may give it another default or require it."""
        use = self
        if required:
            use = dataclasses.replace(self, default=REQUIRED)
        elif default is not _SAME:
            use = dataclasses.replace(self, default=default)
        options: dict[str, Any] = {"metadata": {_METADATA_KEY: use}, "repr": not use.secret}
        if not use.required:
            if type(use.default).__hash__ is None:
                # A dict or list default: each instance gets its own copy, as dataclasses require.
                options["default_factory"] = functools.partial(copy.copy, use.default)
            else:
                options["default"] = use.default
        return dataclasses.field(**options)


def setting(
    env: str,
    default: Any = REQUIRED,
    doc: str = "",
    *,
    secret: bool = False,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """Declare a dataclass field read from `env` (required when no default is given)."""
    return Setting(env, default, doc, secret, parse).field()


# Settings several programs share, declared here once; each user takes `.field()` (or `.field(required=True)`).
DATABASE_URL = Setting("DATABASE_URL", doc="the PostgreSQL database; each service keeps its own schema in it")
NATS_URL = Setting("NATS_URL", doc="the NATS server with JetStream")
NATS_CREDS_FILE = Setting(
    "NATS_CREDS_FILE",
    "",
    "the `.creds` file of this process's NATS credential; unset: connect without credentials (only for a NATS "
    "server without authentication; a warning is logged). A server that refuses the connection stops start-up "
    "naming this setting. `make run` and the k8s manifests give each service its own (see NATS below)",
)
NATS_STREAM_REPLICAS = Setting(
    "NATS_STREAM_REPLICAS",
    1,
    "how many NATS servers keep a copy of each stream this service creates (1 to 5; 3 on a NATS cluster of "
    "3). A stream that exists keeps its count",
)
INTERNAL_KEY = Setting(
    "MAILBLAST_INTERNAL_KEY",
    doc="the key that signs the identity services assert to each other (and the console's session cookie)",
    secret=True,
)
TLS_CA_FILE = Setting(
    "MAILBLAST_TLS_CA_FILE",
    doc="mutual TLS between processes: the CA bundle to trust, PEM (there is no plaintext mode). The `mailblast` "
    "command, without MAILBLAST_TLS_*, takes the files `make run` recorded in `run.json`",
)
TLS_CERT_FILE = Setting(
    "MAILBLAST_TLS_CERT_FILE",
    doc="this process's certificate, PEM; its one URI SAN `spiffe://mailblast/<name>` must name it",
)
TLS_KEY_FILE = Setting("MAILBLAST_TLS_KEY_FILE", doc="the key of that certificate, PEM")
HEALTH_BIND = Setting(
    "MAILBLAST_HEALTH_BIND",
    "",
    "a second, plaintext listener serving only grpc.health.v1, for Kubernetes' native gRPC probes (they cannot "
    "speak TLS); it reveals only SERVING/NOT_SERVING. Unset: none",
)
METRICS_BIND = Setting(
    "MAILBLAST_METRICS_BIND",
    "",
    "where the process serves Prometheus metrics at `/metrics` (host:port, plain HTTP; they name no address or "
    "secret). Unset: none",
)
AUTH_ADDR = Setting(
    "AUTH_ADDR",
    "",
    "the auth service (host:port): where users' bearer tokens are checked and audit events recorded; unset: "
    "only signed service identities are accepted",
)
DKIM_SEALING_KEYS = Setting(
    "MAILBLAST_DKIM_SEALING_KEYS",
    (),
    "Fernet keys (comma-separated; the first seals, the others still open: rotation) for the organisations' DKIM "
    "private keys: campaigns seals them in its database and in the events to the senders, which open them; "
    "campaigns reseals old ones at start. Unset: no sending domains can be added, and the senders sign only "
    "with SENDER_DKIM_*",
    secret=True,
    parse=parse_keys,
)

LISTS_ADDR = Setting("LISTS_ADDR", "", "the lists service (host:port)")
CAMPAIGNS_ADDR = Setting("CAMPAIGNS_ADDR", "", "the campaigns service (host:port)")
TIME_ZONE = Setting(
    "MAILBLAST_TIME_ZONE",
    "Asia/Tokyo",
    "the IANA time zone the console shows times in and schedules are chosen in, unless a person picks another",
)


def declared(cls: type) -> list[tuple[str, Setting]]:
    """The settings of a settings dataclass, by field path ("grpc_tls.ca_file"), nested ones included."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        declaration = f.metadata.get(_METADATA_KEY)
        if declaration is not None:
            found.append((f.name, declaration))
        elif _is_settings_class(hints[f.name]):
            found.extend((f"{f.name}.{path}", s) for path, s in declared(hints[f.name]))
    return found


def read(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build `cls` from the environment (os.environ unless given); a missing or malformed variable is named."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        declaration = f.metadata.get(_METADATA_KEY)
        if declaration is not None:
            values[f.name] = read_setting(declaration, hints[f.name], env)
        elif _is_settings_class(hints[f.name]):
            values[f.name] = read(hints[f.name], env)
    return cls(**values)


def read_setting(declaration: Setting, kind: Any, environ: Mapping[str, str] | None = None) -> Any:
    """One setting's value as `kind`: parsed from the environment, else its default; ConfigError names it."""
    raw = _raw(declaration, os.environ if environ is None else environ)
    if raw is not None:
        return _parse(declaration, kind, raw)
    if declaration.required:
        also = f" (or {declaration.env}_FILE)" if declaration.secret else ""
        raise ConfigError(f"environment variable {declaration.env}{also} is required but not set")
    return copy.copy(declaration.default)


def _is_settings_class(kind: Any) -> bool:
    return dataclasses.is_dataclass(kind) and any(_METADATA_KEY in f.metadata for f in dataclasses.fields(kind))


def _raw(declaration: Setting, env: Mapping[str, str]) -> str | bytes | None:
    if declaration.secret:
        path = env.get(f"{declaration.env}_FILE")
        if path:
            try:
                # Files end with a newline more often than not; keys never do.
                return Path(path).read_bytes().strip()
            except OSError as exc:
                raise ConfigError(
                    f"environment variable {declaration.env}_FILE={path!r} cannot be read: {exc.strerror}"
                ) from None
    return env.get(declaration.env) or None


def _parse(declaration: Setting, kind: Any, raw: str | bytes) -> Any:
    try:
        text = raw if isinstance(raw, str) else raw.decode()
        if declaration.parse is not None:
            return declaration.parse(text)
        return _by_type(declaration.env, kind, raw, text)
    except ConfigError:
        raise
    except ValueError as exc:
        if declaration.secret:
            # The value is a secret: say what is wrong with it, never what it is.
            raise ConfigError(f"environment variable {declaration.env}: {exc}") from None
        raise ConfigError(f"environment variable {declaration.env}={text!r} {exc}") from None


def _by_type(env: str, kind: Any, raw: str | bytes, text: str) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(options) == 1:
            kind = options[0]
    if kind is str:
        return text
    if kind is bytes:
        return raw if isinstance(raw, bytes) else raw.encode()
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("is not a yes/no value")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("is not an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("is not a number") from None
    if typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    raise TypeError(f"{env}: no reader for {kind!r}; declare the setting with parse=")


# ------------------------------------------------------------------------------------------ the docs


def _shown(value: Any) -> str:
    if value is REQUIRED:
        return "required"
    if value in ("", b"", None) or (isinstance(value, tuple | dict | list) and not value):
        return "unset"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`"
    if isinstance(value, str):
        return f"`{value}`"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(owners: Mapping[str, type]) -> str:
    """The settings table, one row per variable, from the settings classes of these programs (name: class).

    Raises ValueError when two declarations of one variable differ in more than their default: a setting is
    declared once.
    """
    uses: dict[str, list[tuple[str, Setting]]] = {}
    for owner, cls in owners.items():
        for _path, declaration in declared(cls):
            uses.setdefault(declaration.env, []).append((owner, declaration))
    for env, users in uses.items():
        kinds = {(d.doc, d.secret, d.parse) for _, d in users}
        if len(kinds) > 1:
            raise ValueError(f"{env} is declared more than once, differently; declare it once and reuse it")
    # Rows of the settings declared here, or used by several programs, come first.
    common = {value.env for value in globals().values() if isinstance(value, Setting)}
    shared = [env for env, users in uses.items() if env in common or len({owner for owner, _ in users}) > 1]
    own = [env for env in uses if env not in shared]
    lines = ["| variable | used by | default | what it is |", "| --- | --- | --- | --- |"]
    for env in shared + own:
        users = uses[env]
        first = users[0][1]
        names = list(dict.fromkeys(owner for owner, _ in users))
        variable = f"`{env}` / `{env}_FILE`" if first.secret else f"`{env}`"
        defaults: dict[str, list[str]] = {}
        for owner, declaration in users:
            defaults.setdefault(_shown(declaration.default), [])
            if owner not in defaults[_shown(declaration.default)]:
                defaults[_shown(declaration.default)].append(owner)
        if len(defaults) == 1:
            default = next(iter(defaults))
        else:
            default = "; ".join(f"{shown} ({', '.join(who)})" for shown, who in defaults.items())
        lines.append(f"| {variable} | {_cell(', '.join(names))} | {_cell(default)} | {_cell(first.doc)} |")
    return "\n".join(lines) + "\n"
