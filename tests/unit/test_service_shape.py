"""Every service starts the same way: `service.start(config, *, ...) -> Running` and `__main__.main()`."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "lists", "campaigns", "sender", "bounce", "gateway", "watchdog")


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_has_start_config_running_and_main(name: str) -> None:
    # A reader who knows one service knows them all: the settings class reads itself from the environment,
    # start takes it and nothing else positionally and gives back what stops it, and importing the entry
    # point starts nothing (main() does).
    config = importlib.import_module(f"services.{name}.config").Config
    service = importlib.import_module(f"services.{name}.service")
    entry = importlib.import_module(f"services.{name}.__main__")
    assert callable(config.from_env)
    assert inspect.iscoroutinefunction(service.start)
    parameters = list(inspect.signature(service.start).parameters.values())
    assert parameters[0].name == "config"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[1:])
    assert inspect.signature(service.start).return_annotation in ("Running", service.Running)
    assert inspect.iscoroutinefunction(service.Running.stop)
    assert list(inspect.signature(entry.main).parameters) == []


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_without_its_settings_stops_naming_the_first_missing_one(name: str) -> None:
    # Started with none of mailblast's variables, every service writes one JSON line saying it cannot start
    # and which variable is missing, and exits with code 2 instead of a traceback.
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["cannot start"], done.stderr
    assert lines[0]["name"] == name and lines[0]["level"] == "error"
    assert lines[0]["error"].startswith("environment variable ")
    assert lines[0]["error"].endswith(" is required but not set")
    assert "Traceback" not in done.stderr
