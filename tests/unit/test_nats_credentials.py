"""The NATS trust `mailblast nats init` and make run keep: made once, private, reissued when permissions change."""

from __future__ import annotations

from pathlib import Path

from cli import nats_credentials
from services.common import bus


def test_init_makes_everything_once_and_private(tmp_path: Path) -> None:
    # The first init writes the seeds, the server settings and a credential per service, all 0600 in a
    # 0700 folder; a second init (the next make run) leaves every file exactly as it was.
    setup = nats_credentials.init(tmp_path / "nats")
    files = sorted(p for p in setup.directory.iterdir())
    assert [p.name for p in files] == sorted(
        ["authority.json", "signing-key.json", "server.conf", *(f"{s}.creds" for s in nats_credentials.SERVICES)]
    )
    assert setup.directory.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    before = {p: p.read_bytes() for p in files}
    nats_credentials.init(tmp_path / "nats")
    assert {p: p.read_bytes() for p in files} == before


def test_init_reissues_a_service_credential_whose_permissions_differ_from_the_code(tmp_path: Path) -> None:
    # A credential issued by an older release (here: lists holding bounce's permissions) is replaced by one
    # with exactly the permissions this release gives lists; the other credentials are left alone.
    setup = nats_credentials.init(tmp_path / "nats")
    issuer = nats_credentials.Issuer.load(setup.signing_key_file)
    setup.creds_file("lists").write_text(issuer.issue("lists", bus.SERVICE_ACCESS["bounce"].publish_allow())[0])
    untouched = setup.creds_file("sender").read_bytes()
    nats_credentials.init(tmp_path / "nats")
    claims = nats_credentials.user_claims(setup.creds_file("lists").read_text())["nats"]
    assert claims["pub"]["allow"] == bus.SERVICE_ACCESS["lists"].publish_allow()
    assert bus.SUBJECT_BOUNCE_RECORDED not in claims["pub"]["allow"]
    assert setup.creds_file("sender").read_bytes() == untouched


def test_server_settings_hold_no_seed(tmp_path: Path) -> None:
    # server.conf goes into the NATS server's configuration (a ConfigMap in Kubernetes): it names the
    # operator and accounts by public keys and JWTs, and carries none of the seeds.
    setup = nats_credentials.init(tmp_path / "nats")
    authority = nats_credentials.Authority.load(setup.authority_file)
    conf = setup.server_config_file.read_text()
    for seed in (authority.operator, authority.system, authority.account, authority.signing):
        assert seed not in conf
    assert f'system_account: "{nats_credentials.public_key(authority.system)}"' in conf
    assert f'"{nats_credentials.public_key(authority.account)}": "ey' in conf  # preloaded account JWT
