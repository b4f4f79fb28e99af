"""The README's command-line walk-through, run against the whole pipeline."""

from __future__ import annotations

import asyncio
import email
import json
from email import policy

import pytest

from cli import main as cli
from tests.support.mtls import default_pki


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run one `mailblast` command in a thread (its gRPC calls are blocking) and capture its output."""
    code = await asyncio.to_thread(cli.run, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def json_line(out: str) -> dict:
    """The command's JSON output (the in-process services log to the same stdout)."""
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def cli_lines(out: str) -> list[str]:
    """The command's own lines, without the services' log lines."""
    return [line for line in out.splitlines() if line.startswith(("campaign ", "imported"))]


async def test_readme_walkthrough(stack, smtp_sink, tmp_path, monkeypatch, capsys):
    # A user creates a list, imports a UTF-8 CSV with Japanese names and one bad row (reported by its
    # line number, the good rows kept), creates a campaign from files, sends it and watches it finish;
    # the messages arrive personalised.
    monkeypatch.setenv("MAILBLAST_LISTS_ADDR", f"127.0.0.1:{stack.lists.grpc_port}")
    monkeypatch.setenv("MAILBLAST_CAMPAIGNS_ADDR", f"127.0.0.1:{stack.campaigns.grpc_port}")
    for name, value in default_pki().env("cli").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAILBLAST_TOKEN", stack.token)

    code, out, _ = await run_cli(capsys, "--json", "lists", "create", "Newsletter")
    assert code == 0
    list_id = json_line(out)["id"]
    code, out, _ = await run_cli(capsys, "fields", "create", "company", "--label", "会社名")
    assert code == 0

    people = tmp_path / "people.csv"
    people.write_text(
        "\ufeffemail,name,company\n"
        "taro@example.com,山田太郎,Example KK\n"
        "hanako@example.org,佐藤花子,Sample Inc\n"
        "not-an-address,Broken,\n",
        encoding="utf-8",
    )
    code, out, err = await run_cli(capsys, "lists", "import", str(list_id), str(people))
    assert code == 2  # some rows were refused
    assert "2 added, 0 updated, 1 rejected" in out
    assert "row 4:" in err and "not-an-address" in err

    html, text = tmp_path / "body.html", tmp_path / "body.txt"
    html.write_text("<p>{{ name }}様、{{ company }}のみなさまへ</p>", encoding="utf-8")
    text.write_text("{{ name }}様、{{ company }}のみなさまへ", encoding="utf-8")
    code, out, _ = await run_cli(
        capsys, "--json", "campaigns", "create", "--name", "秋のご案内", "--list", str(list_id),
        "--from", "news@news.example.com", "--from-name", "Mailblast", "--subject", "{{ name }}様へ 秋のご案内",
        "--html", str(html), "--text", str(text),
    )  # fmt: skip
    assert code == 0
    campaign_id = json_line(out)["id"]
    code, out, _ = await run_cli(capsys, "campaigns", "send", str(campaign_id))
    assert code == 0 and "sending" in out
    code, out, _ = await run_cli(capsys, "campaigns", "watch", str(campaign_id), "--interval", "0.2", "--timeout", "60")
    assert code == 0
    assert cli_lines(out)[-1].endswith("total 2  queued 0  sent 2  deferred 0  bounced 0  failed 0")

    received = smtp_sink.received_by()
    assert sorted(received) == ["hanako@example.org", "taro@example.com"]
    message = email.message_from_bytes(received["taro@example.com"][0].data, policy=policy.default)
    assert message["Subject"] == "山田太郎様へ 秋のご案内"
    assert message.get_body(("plain",)).get_content().strip() == "山田太郎様、Example KKのみなさまへ"


async def test_cli_errors_are_clear(stack, tmp_path, monkeypatch, capsys):
    # Without a token or client certificate, with a CSV lacking an email column, or for an unknown campaign the command
    # says what is wrong instead of a traceback.
    monkeypatch.setenv("MAILBLAST_LISTS_ADDR", f"127.0.0.1:{stack.lists.grpc_port}")
    monkeypatch.setenv("MAILBLAST_CAMPAIGNS_ADDR", f"127.0.0.1:{stack.campaigns.grpc_port}")
    for name, value in default_pki().env("cli").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MAILBLAST_TOKEN", raising=False)
    with pytest.raises(cli.CliError, match="no API token"):
        await run_cli(capsys, "lists", "ls")
    monkeypatch.setenv("MAILBLAST_TOKEN", stack.token)
    # Without its client certificate (no MAILBLAST_TLS_*, no var/run.json) it says which setting is missing.
    with monkeypatch.context() as bare:
        bare.delenv("MAILBLAST_TLS_CERT_FILE")
        bare.setenv("MAILBLAST_RUN_FILE", str(tmp_path / "no-run.json"))
        with pytest.raises(cli.CliError, match="no client certificate for the services: set MAILBLAST_TLS_CERT_FILE"):
            await run_cli(capsys, "lists", "ls")
    bad = tmp_path / "bad.csv"
    bad.write_text("code,amount\nA1,100\nB2,200\n")
    with pytest.raises(cli.CliError, match="no list 7 in your organisation"):
        await run_cli(capsys, "lists", "import", "7", str(bad))
    _, out, _ = await run_cli(capsys, "--json", "lists", "create", "x")
    with pytest.raises(cli.CliError, match="exactly one column must be the email address"):
        await run_cli(capsys, "lists", "import", json_line(out)["id"], str(bad))
    with pytest.raises(cli.CliError, match=r"^not found: campaign 424242 not found$"):
        await run_cli(capsys, "campaigns", "show", "424242")
