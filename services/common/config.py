"""Settings from the environment: every setting an env var, a missing required one named at start-up."""

from __future__ import annotations

import os

_REQUIRED = object()


class ConfigError(Exception):
    """A required setting is missing or malformed; the message names it."""


def env_str(name: str, default: object = _REQUIRED) -> str:
    """Return a string setting, or stop start-up naming the missing variable."""
    value = os.environ.get(name)
    if value is None or value == "":
        if default is _REQUIRED:
            raise ConfigError(f"environment variable {name} is required but not set")
        return str(default)
    return value


def env_int(name: str, default: object = _REQUIRED) -> int:
    """Return an integer setting."""
    raw = env_str(name, default)
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def env_float(name: str, default: object = _REQUIRED) -> float:
    """Return a number setting."""
    raw = env_str(name, default)
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not a number") from None


def env_bool(name: str, default: bool = False) -> bool:
    """Return a yes/no setting (1/0, true/false, yes/no, on/off)."""
    raw = env_str(name, "1" if default else "0").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"environment variable {name}={raw!r} is not a yes/no value")


def env_bytes_secret(name: str) -> bytes:
    """Return a required secret as bytes (the value itself, or the file named by NAME_FILE)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        with open(path, "rb") as fh:
            return fh.read().strip()
    return env_str(name).encode()
