"""deploy/docker/Dockerfile, read and checked (no Docker here): one image, non-root, protos built inside."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_image_is_python_311_slim_and_runs_as_uid_10001() -> None:
    # The image starts from python:3.11-slim and its last USER is the unprivileged uid 10001, so that
    # Kubernetes' runAsNonRoot admits it.
    steps = instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert "useradd --uid 10001" in " ".join(args for word, args in steps if word == "RUN")


def test_protos_are_generated_at_build_like_make_proto() -> None:
    # gen/ is not committed: the image runs grpc_tools.protoc over every proto, as the Makefile does,
    # and puts gen/ on the import path.
    steps = instructions()
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "python -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen" in runs
    assert "proto/mailblast/v1/*.proto" in runs
    makefile = (ROOT / "Makefile").read_text()
    assert "-m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen" in makefile
    envs = " ".join(args for word, args in steps if word == "ENV")
    assert "PYTHONPATH=/app/gen" in envs
    copied = [args.split()[0] for word, args in steps if word == "COPY"]
    assert "proto" in copied


def test_one_entrypoint_for_every_service() -> None:
    # The service is chosen by the arguments (`services.sender`), as the Kubernetes manifests pass it;
    # the project is pip-installed, so its dependencies come from pyproject.toml.
    steps = instructions()
    assert ("ENTRYPOINT", '["python", "-m"]') in steps
    assert ("CMD", '["services.gateway"]') in steps
    runs = [args for word, args in steps if word == "RUN"]
    assert any(args.startswith("pip install .") for args in runs)


def test_build_context_leaves_local_state_out() -> None:
    # The virtualenv, generated code, the development data folder (with its secrets) and git stay out of
    # the image.
    ignored = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for path in (".venv", "gen", "var", ".git"):
        assert path in ignored
