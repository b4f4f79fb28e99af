"""requirements.lock pins, with hashes, every dependency pyproject.toml asks for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ \\]+)", re.MULTILINE)


def _locked() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    return {canonicalize_name(name): version for name, version in _PIN.findall(text)}


def test_every_dependency_is_locked_at_a_version_it_allows():
    # A dependency added to pyproject.toml without `make lock` (or a range the pin no longer meets)
    # would install something untested on a fresh machine: each one must be pinned in the lock file.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    locked = _locked()
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in locked]
    assert not missing, f"not in requirements.lock (run make lock): {missing}"
    outside = [f"{r} (locked {locked[canonicalize_name(r.name)]})" for r in wanted
               if locked[canonicalize_name(r.name)] not in r.specifier]  # fmt: skip
    assert not outside, f"locked versions outside pyproject's ranges (run make lock): {outside}"


def test_every_locked_package_has_hashes():
    # make install runs pip with --require-hashes: a pin without its hashes would stop a fresh install.
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", (ROOT / "requirements.lock").read_text())
    unhashed = [b.split()[0] for b in blocks if _PIN.match(b) and "--hash=sha256:" not in b]
    assert not unhashed, unhashed
