"""The settings reader: one declaration per setting, parsed by type, every error naming its variable."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common import settings
from services.common.rpc import TlsFiles
from services.common.settings import ConfigError, setting
from services.gateway.config import Config as GatewayConfig
from services.sender.config import Config as SenderConfig


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError("is not a port number")
    return port


@dataclass(frozen=True, kw_only=True)
class Example:
    """Settings of every kind the reader knows."""

    url: str = settings.DATABASE_URL.field()
    key: bytes = settings.INTERNAL_KEY.field()
    count: int = setting("EXAMPLE_COUNT", 3, "how many")
    ratio: float = setting("EXAMPLE_RATIO", 0.5, "how much")
    enabled: bool = setting("EXAMPLE_ENABLED", False, "whether")
    names: tuple[str, ...] = setting("EXAMPLE_NAMES", (), "which")
    port: int = setting("EXAMPLE_PORT", 25, "where", parse=_port)
    peer: str = settings.AUTH_ADDR.field()
    maybe: str | None = setting("EXAMPLE_MAYBE", None, "perhaps")
    table: Mapping[str, str] = setting("EXAMPLE_TABLE", {}, "a mapping", parse=lambda text: dict([text.split("=")]))
    tls: TlsFiles
    # Not a setting: kept at its default by the reader.
    switch: bool = True


BASE = {
    "DATABASE_URL": "postgresql://db",
    "MAILBLAST_INTERNAL_KEY": "k" * 32,
    "MAILBLAST_TLS_CA_FILE": "/ca",
    "MAILBLAST_TLS_CERT_FILE": "/cert",
    "MAILBLAST_TLS_KEY_FILE": "/key",
}


def test_unset_settings_take_their_declared_defaults_and_an_empty_one_counts_as_unset():
    # Only the required variables are given (one of the optional ones empty): every other field has the default
    # its declaration names, the nested TLS files are read from their own variables, and `switch` is untouched.
    config = settings.read(Example, {**BASE, "EXAMPLE_COUNT": ""})
    assert config == Example(
        url="postgresql://db", key=b"k" * 32, tls=TlsFiles("/ca", "/cert", "/key"), count=3, peer="", table={}
    )
    assert config.switch is True and config.maybe is None


def test_each_type_is_parsed_from_its_variable():
    # Integers, numbers, yes/no, comma lists, optional values and a parse function of the declaration's own.
    config = settings.read(
        Example,
        {
            **BASE,
            "EXAMPLE_COUNT": "12",
            "EXAMPLE_RATIO": "2.5",
            "EXAMPLE_ENABLED": "Yes",
            "EXAMPLE_NAMES": " a, b ,,c",
            "EXAMPLE_PORT": "2525",
            "EXAMPLE_MAYBE": "here",
            "EXAMPLE_TABLE": "x=y",
            "AUTH_ADDR": "auth:50051",
        },
    )
    assert (config.count, config.ratio, config.enabled, config.names) == (12, 2.5, True, ("a", "b", "c"))
    assert (config.port, config.maybe, dict(config.table), config.peer) == (2525, "here", {"x": "y"}, "auth:50051")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EXAMPLE_COUNT", "many", "environment variable EXAMPLE_COUNT='many' is not an integer"),
        ("EXAMPLE_RATIO", "half", "environment variable EXAMPLE_RATIO='half' is not a number"),
        ("EXAMPLE_ENABLED", "maybe", "environment variable EXAMPLE_ENABLED='maybe' is not a yes/no value"),
        ("EXAMPLE_PORT", "70000", "environment variable EXAMPLE_PORT='70000' is not a port number"),
    ],
)
def test_a_malformed_value_is_refused_naming_its_variable(variable: str, value: str, message: str):
    # Start-up stops with the variable, the value and what is wrong with it.
    with pytest.raises(ConfigError) as error:
        settings.read(Example, {**BASE, variable: value})
    assert str(error.value) == message


@pytest.mark.parametrize("missing", ["DATABASE_URL", "MAILBLAST_TLS_KEY_FILE"])
def test_a_missing_required_setting_is_named(missing: str):
    # A required variable that is unset, nested ones included, stops start-up with its name.
    environ = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=f"^environment variable {missing} is required but not set$"):
        settings.read(Example, environ)


def test_a_secret_comes_from_its_file_and_never_shows(tmp_path: Path):
    # MAILBLAST_INTERNAL_KEY_FILE names a file holding the key (a trailing newline is not part of it) and wins
    # over the variable; the key is in no repr; a missing secret names both ways to give it; an unreadable
    # file is named; a secret that does not parse is refused without echoing it.
    key_file = tmp_path / "internal.key"
    key_file.write_bytes(b"s3cret-key-from-file\n")
    environ = {**BASE, "MAILBLAST_INTERNAL_KEY_FILE": str(key_file)}
    config = settings.read(Example, environ)
    assert config.key == b"s3cret-key-from-file"
    assert "s3cret" not in repr(config) and "k" * 32 not in repr(settings.read(Example, BASE))
    without = {k: v for k, v in BASE.items() if k != "MAILBLAST_INTERNAL_KEY"}
    with pytest.raises(ConfigError, match=r"MAILBLAST_INTERNAL_KEY \(or MAILBLAST_INTERNAL_KEY_FILE\) is required"):
        settings.read(Example, without)
    with pytest.raises(ConfigError, match="MAILBLAST_INTERNAL_KEY_FILE='/nowhere/key' cannot be read"):
        settings.read(Example, {**BASE, "MAILBLAST_INTERNAL_KEY_FILE": "/nowhere/key"})

    @dataclass(frozen=True, kw_only=True)
    class Pin:
        pin: int = setting("EXAMPLE_PIN", doc="a secret number", secret=True)

    with pytest.raises(ConfigError) as error:
        settings.read(Pin, {"EXAMPLE_PIN": "hunter2"})
    assert str(error.value) == "environment variable EXAMPLE_PIN: is not an integer"


def test_shared_settings_are_one_declaration_that_a_user_may_require():
    # AUTH_ADDR is declared once in common: optional where it is used by default, required where the user says
    # so, with the same variable and doc; a second, different declaration of one variable cannot be documented.
    optional = dict(settings.declared(Example))["peer"]
    required = dict(settings.declared(GatewayConfig))["auth_addr"]
    assert optional.env == required.env == "AUTH_ADDR" and optional.doc == required.doc
    assert not optional.required and required.required

    @dataclass(frozen=True, kw_only=True)
    class Copy:
        url: str = setting("DATABASE_URL", doc="a second declaration")

    with pytest.raises(ValueError, match="DATABASE_URL is declared more than once"):
        settings.markdown_table({"example": Example, "copy": Copy})


def test_a_config_built_in_code_keeps_its_checks():
    # Tests and tools build a Config with keyword arguments; its own checks still run (SENDER_TLS).
    base = {
        "database_url": "postgresql://db",
        "nats_url": "nats://n",
        "internal_key": b"k",
        "return_path_domain": "bounces.example.com",
        "unsubscribe_url": "https://mail.example.com/u/",
        "grpc_tls": TlsFiles("/ca", "/cert", "/key"),
    }
    assert SenderConfig(**base).message_id_domain == "bounces.example.com"
    with pytest.raises(ConfigError, match="SENDER_TLS='sometimes'"):
        SenderConfig(**base, tls="sometimes")
    with pytest.raises(TypeError):
        SenderConfig("postgresql://db", **{k: v for k, v in base.items() if k != "database_url"})
    assert dataclasses.replace(SenderConfig(**base), concurrency=8).concurrency == 8
