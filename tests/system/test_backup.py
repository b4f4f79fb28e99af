"""`mailblast backup` and `mailblast restore` against a populated installation on real servers."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email
import re
import time
import uuid
from email import policy

import psycopg
import pytest
from mailblast.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    campaigns_pb2,
    campaigns_pb2_grpc,
    events_pb2,
    lists_pb2,
    lists_pb2_grpc,
    lists_suppression_pb2,
)

from cli import backup
from cli import main as cli
from services.auth import service as auth_service
from services.auth import totp
from services.campaigns import service as campaigns_service
from services.common.identity import IDENTITY_HEADER, Principal
from services.common.sealing import parse_keys
from services.lists import service as lists_service
from tests.support.mtls import default_pki

PASSWORD = "violet-otter-47-lantern"
SCHEMAS = ("auth", "bounce", "campaigns", "lists", "sender")


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every table of the services' schemas, sorted, by table name."""
    tables: dict[str, list[tuple]] = {}
    with psycopg.connect(url) as conn:
        names = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE' ORDER BY 1, 2",
            (list(SCHEMAS),),
        ).fetchall()
        for schema, table in names:
            rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            tables[f"{schema}.{table}"] = sorted(rows, key=repr)
        sequences = conn.execute(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences WHERE schemaname = ANY(%s) ORDER BY 1, 2",
            (list(SCHEMAS),),
        ).fetchall()
        tables["sequences"] = sequences
    return tables


async def at_rest(url: str, timeout: float = 30.0) -> dict[str, list[tuple]]:
    """The database once two looks 0.3 s apart find it unchanged (the outbox relays have caught up)."""
    deadline = time.monotonic() + timeout
    last = await asyncio.to_thread(snapshot, url)
    while True:
        await asyncio.sleep(0.3)
        now = await asyncio.to_thread(snapshot, url)
        if now == last:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError("the installation kept changing its database")
        last = now


def gateway(signer) -> list[tuple[str, str]]:
    """Metadata of the console calling auth as itself."""
    return [(IDENTITY_HEADER, signer.sign(Principal(organization_id=0, service="gateway"), "auth"))]


async def enrol_with_totp(stack, smtp_sink) -> str:
    """Invite alice (the link from the caught mail), set her password, turn on TOTP; return her TOTP secret."""
    stub = auth_pb2_grpc.AuthServiceStub(stack.channel(stack.auth.grpc_port, "gateway"))
    await auth_pb2_grpc.AuthServiceStub(stack.channel(stack.auth.grpc_port, "cli")).CreateUser(
        auth_pb2.CreateUserRequest(login="alice", email="alice@example.org", role="editor", send_invite=True),
        metadata=stack.metadata,
    )
    deadline = time.monotonic() + 30
    while "alice@example.org" not in smtp_sink.received_by():
        assert time.monotonic() < deadline, "no invitation mail arrived"
        await asyncio.sleep(0.05)
    mail = email.message_from_bytes(smtp_sink.received_by()["alice@example.org"][0].data, policy=policy.default)
    token = re.search(r"/reset/([A-Za-z0-9_-]+)", mail.get_body(("plain",)).get_content()).group(1)
    await stub.ResetPassword(
        auth_pb2.ResetPasswordRequest(token=token, new_password=PASSWORD), metadata=gateway(stack.signer)
    )
    login = await stub.Login(
        auth_pb2.LoginRequest(login="alice", password=PASSWORD, source_ip="203.0.113.5", user_agent="pytest"),
        metadata=gateway(stack.signer),
    )
    setup = await stub.BeginTotpSetup(
        auth_pb2.BeginTotpSetupRequest(session_token=login.session_token), metadata=gateway(stack.signer)
    )
    await stub.ConfirmTotp(
        auth_pb2.ConfirmTotpRequest(session_token=login.session_token, code=totp.code_at(setup.secret, time.time())),
        metadata=gateway(stack.signer),
    )
    return setup.secret


def fresh_database(postgres_server_url: str) -> str:
    """A new, empty database on the same server (dropped by the test's finaliser)."""
    name = f"mbrestore_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(postgres_server_url, dbname=name)


def drop_database(postgres_server_url: str, url: str) -> None:
    """Drop a database fresh_database made."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Run one `mailblast` command in a thread; its exit status and its own output lines."""
    try:
        code = await asyncio.to_thread(cli.run, list(argv))
    except cli.CliError as exc:
        code, message = 1, f"mailblast: {exc}"
    else:
        message = ""
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if not line.startswith("{")]
    return code, "\n".join([*lines, message]).strip()


async def test_backup_restores_a_populated_installation(
    stack, smtp_sink, database_url, postgres_server_url, internal_key, dkim_keys, tmp_path, monkeypatch, capsys
):
    # An installation with a list of subscribers, a suppression, a sent campaign with its counters and a
    # user who logs in with TOTP is backed up with `mailblast backup` while it runs, with the keys that open
    # what it sealed and the DKIM keys its DNS publishes. The file holds no address or key in the clear.
    # `mailblast restore` refuses a database that is not empty, then brings the backup into a new one:
    # every row of every schema is as it was, the services start on it and answer with the same lists and
    # counters, and alice logs in with a code from her authenticator, because the backup brought back the
    # TOTP keys. A wrong key opens nothing.
    people = [f"person{i}@example.com" for i in range(40)]
    list_id = await stack.create_list(people, name="秋のニュース")
    await stack.lists_stub.AddSuppressions(
        lists_suppression_pb2.AddSuppressionsRequest(
            emails=["blocked@example.com"], reason=events_pb2.SUPPRESSION_REASON_MANUAL, source="test"
        ),
        metadata=stack.metadata,
    )
    sent = await stack.send_campaign([list_id], name="秋のご案内")
    campaign = await stack.wait_campaign(sent.id, lambda c: c.counters.sent == len(people))
    secret = await enrol_with_totp(stack, smtp_sink)
    before = await at_rest(database_url)

    key_file = tmp_path / "backup.key"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("MAILBLAST_BACKUP_KEY_FILE", str(key_file))
    monkeypatch.setenv("AUTH_TOTP_KEYS", ",".join(k.decode() for k in stack.auth_config.totp_keys))
    monkeypatch.setenv("MAILBLAST_INTERNAL_KEY", internal_key.decode())
    monkeypatch.setenv("SENDER_DKIM_KEY_FILE", str(dkim_keys.rsa_key))
    monkeypatch.setenv("SENDER_DKIM_ED25519_KEY_FILE", str(dkim_keys.ed25519_key))
    assert (await run_cli(capsys, "backup-key", str(key_file)))[0] == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    target = tmp_path / "mailblast.backup"
    code, out = await run_cli(capsys, "backup", str(target))
    assert code == 0, out
    assert "schemas auth, bounce, campaigns, lists, sender" in out
    assert "keys AUTH_TOTP_KEYS, MAILBLAST_INTERNAL_KEY, SENDER_DKIM_KEY_FILE, SENDER_DKIM_ED25519_KEY_FILE" in out
    data = target.read_bytes()
    assert data.startswith(backup.MAGIC)
    private_keys = (dkim_keys.rsa_key.read_bytes(), dkim_keys.ed25519_key.read_bytes())
    for clear in (b"person1@example.com", b"alice", stack.auth_config.totp_keys[0], internal_key, b"CREATE TABLE",
                  b"PRIVATE KEY", *private_keys):  # fmt: skip
        assert clear not in data and clear not in out.encode()
    assert await asyncio.to_thread(snapshot, database_url) == before
    # A second backup to the same file is refused: backups are never overwritten.
    code, out = await run_cli(capsys, "backup", str(target))
    assert code == 1 and "exists" in out and target.read_bytes() == data

    restored_url = fresh_database(postgres_server_url)
    try:
        secrets_dir = tmp_path / "restored-secrets"
        code, out = await run_cli(capsys, "restore", str(target), "--secrets-dir", str(secrets_dir))
        assert code == 1 and "DATABASE_URL is not empty" in out  # still pointing at the live database
        monkeypatch.setenv("DATABASE_URL", restored_url)
        other_key = tmp_path / "other.key"
        backup.write_key(other_key)
        monkeypatch.setenv("MAILBLAST_BACKUP_KEY_FILE", str(other_key))
        code, out = await run_cli(capsys, "restore", str(target), "--secrets-dir", str(secrets_dir))
        assert code == 1 and "this key does not open the backup" in out
        monkeypatch.setenv("MAILBLAST_BACKUP_KEY_FILE", str(key_file))
        code, out = await run_cli(capsys, "restore", str(target), "--secrets-dir", str(secrets_dir))
        assert code == 0, out
        assert f"AUTH_TOTP_KEYS: {secrets_dir / 'totp-keys'}" in out
        assert await asyncio.to_thread(snapshot, restored_url) == before
        restored_keys = parse_keys((secrets_dir / "totp-keys").read_text())
        assert restored_keys == stack.auth_config.totp_keys
        assert (secrets_dir / "internal-key").read_bytes() == internal_key
        assert (secrets_dir / "dkim-rsa.pem").read_bytes() == private_keys[0]
        assert (secrets_dir / "dkim-ed25519.pem").read_bytes() == private_keys[1]
        assert f"SENDER_DKIM_KEY_FILE: {secrets_dir / 'dkim-rsa.pem'} (set SENDER_DKIM_KEY_FILE to it)" in out
        assert (secrets_dir / "totp-keys").stat().st_mode & 0o777 == 0o600

        await check_services_on(stack, restored_url, restored_keys, list_id, campaign, secret)
    finally:
        drop_database(postgres_server_url, restored_url)


async def check_services_on(stack, url: str, totp_keys, list_id: int, campaign, secret: str) -> None:
    """Start auth, lists and campaigns on the restored database: same lists, counters, and alice's TOTP."""
    auth = await auth_service.start(dataclasses.replace(stack.auth_config, database_url=url, totp_keys=totp_keys))
    auth_addr = f"127.0.0.1:{auth.grpc_port}"
    lists = await lists_service.start(dataclasses.replace(stack.lists_config, database_url=url, auth_addr=auth_addr))
    campaigns = await campaigns_service.start(
        dataclasses.replace(
            stack.campaigns_config, database_url=url, auth_addr=auth_addr, lists_addr=f"127.0.0.1:{lists.grpc_port}"
        )
    )
    pki = default_pki()
    try:
        async with (
            pki.channel(lists.grpc_port, "cli") as lists_channel,
            pki.channel(campaigns.grpc_port, "cli") as campaigns_channel,
            pki.channel(auth.grpc_port, "gateway") as auth_channel,
        ):
            # The admin's API token is in the restored auth schema too.
            lists_stub = lists_pb2_grpc.ListsServiceStub(lists_channel)
            shown = await lists_stub.ListSubscribers(
                lists_pb2.ListSubscribersRequest(list_id=list_id, page_size=100), metadata=stack.metadata
            )
            assert len(shown.subscribers) == 40
            got = await campaigns_pb2_grpc.CampaignsServiceStub(campaigns_channel).GetCampaign(
                campaigns_pb2.GetCampaignRequest(campaign_id=campaign.id), metadata=stack.metadata
            )
            assert got.name == "秋のご案内" and got.counters == campaign.counters and got.state == campaign.state

            stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
            asked = await stub.Login(
                auth_pb2.LoginRequest(login="alice", password=PASSWORD, source_ip="203.0.113.5", user_agent="pytest"),
                metadata=gateway(stack.signer),
            )
            assert asked.status == auth_pb2.LOGIN_STATUS_TOTP_REQUIRED
            # The next step's code: the current one was used to confirm the setup (a replay).
            ok = await stub.Login(
                auth_pb2.LoginRequest(
                    challenge_token=asked.challenge_token, totp_code=totp.code_at(secret, time.time() + 30)
                ),
                metadata=gateway(stack.signer),
            )
            assert ok.status == auth_pb2.LOGIN_STATUS_OK and ok.session_token
    finally:
        await campaigns.stop()
        await lists.stop()
        await auth.stop()


def test_a_damaged_or_cut_backup_restores_nothing(tmp_path):
    # A backup whose bytes were changed, or which was cut short, is refused before anything reaches a
    # database: every part is authenticated, and the last one says it is the last.
    key = base64.urlsafe_b64decode(backup.new_key())
    path = tmp_path / "b"
    with path.open("wb") as out:
        writer = backup._SealedWriter(out, key)
        writer.write(b"x" * (backup.CHUNK * 2 + 10))
        writer.close()
    whole = path.read_bytes()

    def opened() -> bytes:
        with path.open("rb") as source:
            return b"".join(backup._opened(source, key))

    assert opened() == b"x" * (backup.CHUNK * 2 + 10)
    path.write_bytes(whole[: backup.CHUNK + 100])
    with pytest.raises(backup.BackupError, match="cut short"):
        opened()
    altered = bytearray(whole)
    altered[backup.CHUNK + 200] ^= 1
    path.write_bytes(bytes(altered))
    with pytest.raises(backup.BackupError, match=r"part 2 .* altered"):
        opened()
    # Dropping the last part leaves a file that ends where a part should begin.
    last = len(whole) - (4 + 10 + 16)
    path.write_bytes(whole[:last])
    with pytest.raises(backup.BackupError, match="cut short"):
        opened()
