"""Sending domains: DKIM keys sealed, the records to publish, the live check, and DMARC alignment enforced."""

from __future__ import annotations

import asyncio
import dataclasses
import email
from email import policy

import grpc
import psycopg
import pytest
import pytest_asyncio
from cryptography.fernet import Fernet, InvalidToken
from mailblast.v1 import campaigns_pb2, campaigns_pb2_grpc, domains_pb2, domains_pb2_grpc, lists_pb2, lists_pb2_grpc

from services.common.identity import IDENTITY_HEADER, Principal
from services.common.sealing import SecretBox
from services.common.verp import parse_return_path
from tests.support.dkim_verify import EVERY_VERIFIER, passing, verify_everywhere
from tests.support.dns import DnsServer
from tests.support.stack import DKIM_SEALING_KEY, RETURN_PATH_DOMAIN, Stack, start_stack

DOMAIN = "my-shop.co.jp"
SPF_INCLUDE = "_spf.mailblast.example.com"
PASS = domains_pb2.RECORD_STATUS_PASS
MISSING = domains_pb2.RECORD_STATUS_MISSING
WRONG = domains_pb2.RECORD_STATUS_WRONG
ERROR = domains_pb2.RECORD_STATUS_ERROR
# The sealing key an installation rotates to: the senders hold it beside the old one before campaigns seals with it.
NEW_SEALING_KEY = Fernet.generate_key()


@pytest_asyncio.fixture
async def stack(database_url, nats_server, internal_key, smtp_sink, tls_files, dkim_keys, dns_server):
    """The whole pipeline, campaigns checking sending domains against the test's DNS server."""
    dns_server.add_zone("mailblast.example.com")
    dns_server.add_txt(SPF_INCLUDE, "v=spf1 ip4:192.0.2.0/24 -all")
    running = await start_stack(
        database_url, nats_server, internal_key, smtp_sink.port, tls_files[0], dkim_keys,
        campaigns_overrides={"dns_resolver": dns_server.address, "spf_include": SPF_INCLUDE,
                             "return_path_target": RETURN_PATH_DOMAIN},
        sender_overrides={"dkim_sealing_keys": (NEW_SEALING_KEY, DKIM_SEALING_KEY)},
    )  # fmt: skip
    try:
        yield running
    finally:
        await running.stop()


def domains_stub(stack: Stack) -> domains_pb2_grpc.DomainsServiceStub:
    return domains_pb2_grpc.DomainsServiceStub(stack.channel(stack.campaigns.grpc_port))


def by_purpose(domain: domains_pb2.SendingDomain) -> dict[str, domains_pb2.DnsRecord]:
    return {record.purpose: record for record in domain.records}


def publish(dns_server: DnsServer, domain: domains_pb2.SendingDomain, *purposes: str) -> None:
    """Publish the records the product asked for, exactly as shown (what the customer copies)."""
    for record in domain.records:
        if purposes and record.purpose not in purposes:
            continue
        dns_server.remove(record.name, record.type)
        if record.type == "CNAME":
            dns_server.add(record.name, "CNAME", record.value + ".")
        else:
            dns_server.add_txt(record.name, record.value)


async def copied_to_the_senders(stack: Stack, domain: str = DOMAIN, timeout: float = 30.0) -> None:
    """Wait until the verified domain is in the senders' copy (it travels over NATS within milliseconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await stack.senders[0].copies.verified_domains(domain):
        assert asyncio.get_running_loop().time() < deadline, f"{domain} never reached the senders' copy"
        await asyncio.sleep(0.05)


def as_other_organisation(stack: Stack, organization_id: int = 999) -> list[tuple[str, str]]:
    """Metadata of an admin of another organisation, as the console relays one."""
    principal = Principal(organization_id=organization_id, scopes=("read", "send", "admin"), service="gateway")
    return [(IDENTITY_HEADER, stack.signer.sign(principal, "campaigns"))]


async def test_a_domain_gets_sealed_keys_the_exact_records_and_is_verified_once_they_are_published(
    stack, dns_server, database_url
):
    # An organisation adds my-shop.co.jp, which already has an SPF record of its own: the product makes an
    # RSA-2048 and an Ed25519 key (sealed in the database, never returned), shows two DKIM TXT records,
    # the SPF record with its include merged in, DMARC at p=none, the return-path CNAME and the optional
    # MTA-STS / TLS-RPT records. Nothing is published yet: every required record is missing. Once the
    # customer publishes what was shown, the check passes and the domain is verified.
    dns_server.add_zone(DOMAIN)
    dns_server.add_zone("example.org")
    dns_server.add_txt("_spf.example.org", "v=spf1 ip4:198.51.100.0/24 ~all")
    dns_server.add_txt(DOMAIN, "v=spf1 include:_spf.example.org ~all")
    stub = domains_stub(stack)
    added = await stub.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain="My-Shop.co.jp."),
                                        metadata=stack.metadata)  # fmt: skip
    assert added.domain == DOMAIN and not added.verified
    records = by_purpose(added)
    assert set(records) == {"dkim-rsa", "dkim-ed25519", "spf", "dmarc", "return-path", "mta-sts", "tls-rpt"}
    assert records["dkim-rsa"].name == f"mb1-rsa._domainkey.{DOMAIN}"
    assert records["dkim-rsa"].value.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # a 2048-bit key's DER
    assert records["dkim-ed25519"].name == f"mb1-ed25519._domainkey.{DOMAIN}"
    assert records["dkim-ed25519"].value.startswith("v=DKIM1; k=ed25519; p=")
    assert records["spf"].value == f"v=spf1 include:_spf.example.org include:{SPF_INCLUDE} ~all"
    assert records["dmarc"].name == f"_dmarc.{DOMAIN}"
    assert records["dmarc"].value == f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{DOMAIN}; adkim=r; aspf=r"
    assert (records["return-path"].type, records["return-path"].name, records["return-path"].value) == (
        "CNAME", f"mb-bounces.{DOMAIN}", RETURN_PATH_DOMAIN,
    )  # fmt: skip
    assert not records["mta-sts"].required and not records["tls-rpt"].required
    assert records["dkim-rsa"].status == MISSING and records["dmarc"].status == MISSING
    assert records["spf"].status == WRONG
    assert records["spf"].problem == f"the SPF record of {DOMAIN} does not include {SPF_INCLUDE}"
    assert records["spf"].fix == records["spf"].value

    # The private keys are sealed with the installation's key; nothing in the answer holds one.
    assert b"PRIVATE" not in added.SerializeToString()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (await conn.execute("SELECT algorithm, sealed_private_key FROM campaigns.dkim_keys")).fetchall()
    assert sorted(a for a, _ in rows) == ["ed25519", "rsa"]
    for _, sealed in rows:
        assert "PRIVATE KEY" not in sealed
        assert SecretBox((DKIM_SEALING_KEY,)).open(sealed).startswith("-----BEGIN PRIVATE KEY-----")

    publish(dns_server, added, "dkim-rsa", "dkim-ed25519", "spf", "dmarc", "return-path")
    checked = await stub.CheckSendingDomain(domains_pb2.SendingDomainRequest(domain_id=added.id),
                                            metadata=stack.metadata)  # fmt: skip
    records = by_purpose(checked)
    assert checked.verified, [(r.purpose, r.problem) for r in checked.records]
    assert all(records[p].status == PASS for p in ("dkim-rsa", "dkim-ed25519", "spf", "dmarc", "return-path"))
    assert records["dmarc"].advice.startswith("p=none only monitors")
    assert records["mta-sts"].status == MISSING and records["mta-sts"].problem.endswith("(optional)")
    listed = await stub.ListSendingDomains(domains_pb2.ListSendingDomainsRequest(), metadata=stack.metadata)
    assert [(d.domain, d.verified) for d in listed.domains] == [(DOMAIN, True)]


async def test_a_wrong_key_a_spf_record_over_ten_lookups_and_a_dns_timeout_each_say_what_is_wrong(stack, dns_server):
    # Published wrongly: another DKIM key at the RSA selector, an SPF record needing 11 DNS look-ups, a
    # CNAME to the wrong host. Each check says what is wrong and what to publish; the domain stays
    # unverified. A DNS server that does not answer is neither pass nor fail: the check says so and the
    # verification stays as it was.
    dns_server.add_zone(DOMAIN)
    stub = domains_stub(stack)
    added = await stub.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain=DOMAIN), metadata=stack.metadata)
    publish(dns_server, added)
    records = by_purpose(added)
    dns_server.replace(
        records["dkim-rsa"].name, "TXT", '"v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"'
    )
    for n in range(10):
        dns_server.add_txt(f"s{n}.{DOMAIN}", "v=spf1 a -all")
    includes = " ".join(f"include:s{n}.{DOMAIN}" for n in range(10))
    dns_server.remove(DOMAIN, "TXT")
    dns_server.add_txt(DOMAIN, f"v=spf1 {includes} include:{SPF_INCLUDE} ~all")
    dns_server.replace(records["return-path"].name, "CNAME", "bounces.elsewhere.example.")
    checked = await stub.CheckSendingDomain(domains_pb2.SendingDomainRequest(domain_id=added.id),
                                            metadata=stack.metadata)  # fmt: skip
    records = by_purpose(checked)
    assert not checked.verified
    assert records["dkim-rsa"].status == WRONG
    assert (
        records["dkim-rsa"].problem
        == f"the DKIM key at mb1-rsa._domainkey.{DOMAIN} is not the one this domain signs with"
    )
    assert records["dkim-rsa"].fix.startswith("v=DKIM1; k=rsa; p=")
    assert records["dkim-ed25519"].status == PASS
    assert records["spf"].status == WRONG
    # 10 includes each with an `a`, plus ours: 21 look-ups.
    assert "needs 21 DNS look-ups; at most 10 are allowed" in records["spf"].problem
    assert records["return-path"].status == WRONG
    assert records["return-path"].problem == (
        f"mb-bounces.{DOMAIN} points to bounces.elsewhere.example instead of {RETURN_PATH_DOMAIN}"
    )

    # Fixed, verified; then DNS stops answering for DMARC: an error, and the domain stays verified.
    publish(dns_server, added, "dkim-rsa", "return-path")
    dns_server.replace(DOMAIN, "TXT", f'"v=spf1 include:{SPF_INCLUDE} ~all"')
    request = domains_pb2.SendingDomainRequest(domain_id=added.id)
    assert (await stub.CheckSendingDomain(request, metadata=stack.metadata)).verified
    dns_server.fail(f"_dmarc.{DOMAIN}")
    checked = await stub.CheckSendingDomain(request, metadata=stack.metadata)
    dmarc = by_purpose(checked)["dmarc"]
    assert dmarc.status == ERROR and dmarc.problem.startswith(f"DNS could not look _dmarc.{DOMAIN} up")
    assert checked.verified
    # The record removed for good: the domain is no longer verified.
    dns_server.heal(f"_dmarc.{DOMAIN}")
    dns_server.remove(f"_dmarc.{DOMAIN}")
    checked = await stub.CheckSendingDomain(request, metadata=stack.metadata)
    assert by_purpose(checked)["dmarc"].status == MISSING and not checked.verified


async def test_bad_domains_duplicates_and_other_organisations(stack, dns_server):
    # An invalid name is refused naming it; a domain added twice is ALREADY_EXISTS; another
    # organisation sees none of this one's domains (NOT_FOUND), and cannot add one this organisation verified.
    dns_server.add_zone(DOMAIN)
    stub = domains_stub(stack)
    for bad, reason in (("", "give a domain name"), ("not a domain", "is not a domain name"),
                        ("192.0.2.1", "is an address"), ("localhost", "is not a domain name")):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain=bad), metadata=stack.metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("domain: ") and reason in refused.value.details()
    added = await stub.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain=DOMAIN), metadata=stack.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await stub.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain=DOMAIN), metadata=stack.metadata)
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS

    relayed = domains_pb2_grpc.DomainsServiceStub(stack.channel(stack.campaigns.grpc_port, "gateway"))
    other = as_other_organisation(stack)
    for call in (relayed.GetSendingDomain, relayed.CheckSendingDomain, relayed.DeleteSendingDomain):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await call(domains_pb2.SendingDomainRequest(domain_id=added.id), metadata=other)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await relayed.ListSendingDomains(domains_pb2.ListSendingDomainsRequest(), metadata=other)).domains

    publish(dns_server, added)
    request = domains_pb2.SendingDomainRequest(domain_id=added.id)
    assert (await stub.CheckSendingDomain(request, metadata=stack.metadata)).verified
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await relayed.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain=DOMAIN), metadata=other)
    assert taken.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert taken.value.details() == f"{DOMAIN} is verified by another organisation"
    # Nothing half-created: the other organisation has no domain.
    assert not (await relayed.ListSendingDomains(domains_pb2.ListSendingDomainsRequest(), metadata=other)).domains


async def test_a_campaign_from_a_domain_the_organisation_has_not_verified_is_refused_when_saved(stack, dns_server):
    # A campaign From info@my-shop.co.jp is refused while the domain is unverified, the reason naming the
    # From and the domain; once verified it is saved. Another organisation cannot save one From it.
    dns_server.add_zone(DOMAIN)
    list_id = await stack.create_list(["reader@example.net"])
    request = campaigns_pb2.CreateCampaignRequest(
        name="sale", list_ids=[list_id], from_address=f"info@{DOMAIN}", subject="s", text_body="t"
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.campaigns_stub.CreateCampaign(request, metadata=stack.metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        f"from_address: the From address info@{DOMAIN} is on {DOMAIN}, which is not a verified sending domain of "
        "your organisation: add the domain under Sending domains and publish its DNS records"
    )
    stub = domains_stub(stack)
    added = await stub.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain=DOMAIN), metadata=stack.metadata)
    publish(dns_server, added)
    assert (await stub.CheckSendingDomain(domains_pb2.SendingDomainRequest(domain_id=added.id),
                                          metadata=stack.metadata)).verified  # fmt: skip
    saved = await stack.campaigns_stub.CreateCampaign(request, metadata=stack.metadata)
    assert saved.from_address == f"info@{DOMAIN}"

    other_lists = lists_pb2_grpc.ListsServiceStub(stack.channel(stack.lists.grpc_port, "gateway"))
    principal = Principal(organization_id=999, scopes=("read", "send", "admin"), service="gateway")
    other_list = await other_lists.CreateList(
        lists_pb2.CreateListRequest(name="theirs"), metadata=[(IDENTITY_HEADER, stack.signer.sign(principal, "lists"))]
    )
    relayed = campaigns_pb2_grpc.CampaignsServiceStub(stack.channel(stack.campaigns.grpc_port, "gateway"))
    foreign = campaigns_pb2.CreateCampaignRequest(
        name="x", list_ids=[other_list.id], from_address=f"news@{DOMAIN}", subject="s", text_body="t"
    )
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await relayed.CreateCampaign(foreign, metadata=as_other_organisation(stack))
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "which is not a verified sending domain" in other.value.details()


async def test_a_campaign_from_an_unverified_domain_is_refused_and_one_from_a_verified_domain_is_signed_by_it(
    stack, dns_server, smtp_sink, database_url
):
    # Once my-shop.co.jp is verified, the organisation's campaign From it goes out signed d=my-shop.co.jp
    # with both its keys (dkimpy,
    # Mail::DKIM and OpenDKIM verify them with the records the product told the customer to publish),
    # the envelope sender under mb-bounces.my-shop.co.jp, so SPF aligns too.
    dns_server.add_zone(DOMAIN)
    list_id = await stack.create_list(["reader@example.net"])
    stub = domains_stub(stack)
    added = await stub.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain=DOMAIN), metadata=stack.metadata)
    publish(dns_server, added)
    request = domains_pb2.SendingDomainRequest(domain_id=added.id)
    assert (await stub.CheckSendingDomain(request, metadata=stack.metadata)).verified
    await copied_to_the_senders(stack)

    campaign = await stack.send_campaign([list_id], from_address=f"info@{DOMAIN}")
    await smtp_sink.wait_for(1, timeout=60)
    [caught] = smtp_sink.received_by()["reader@example.net"]
    assert caught.mail_from.endswith(f"@mb-bounces.{DOMAIN}")
    ref = parse_return_path(stack.sender_config.internal_key, caught.mail_from)
    assert ref is not None and ref.campaign_id == campaign.id
    message = email.message_from_bytes(caught.data, policy=policy.default)
    signatures = message.get_all("DKIM-Signature")
    assert len(signatures) == 2 and all(f"d={DOMAIN};" in s.replace(" ", "") for s in signatures)
    [checks] = await asyncio.to_thread(verify_everywhere, [caught.data], dns_server)
    assert passing(checks) == EVERY_VERIFIER, checks
    assert {c.domain for c in checks} == {DOMAIN}

    # A test send, a transactional message, is signed by the domain too, its bounces under the domain.
    await stack.campaigns_stub.SendTest(
        campaigns_pb2.SendTestRequest(campaign_id=campaign.id, to_address="tester@example.net"), metadata=stack.metadata
    )
    await smtp_sink.wait_for(2, timeout=60)
    [tested] = smtp_sink.received_by()["tester@example.net"]
    assert tested.mail_from == f"bounces@mb-bounces.{DOMAIN}"
    [checks] = await asyncio.to_thread(verify_everywhere, [tested.data], dns_server)
    assert passing(checks) == EVERY_VERIFIER and {c.domain for c in checks} == {DOMAIN}, checks


async def test_a_new_sealing_key_reseals_the_domain_keys_and_the_senders_still_sign(
    stack, dns_server, smtp_sink, database_url
):
    # The installation rotates MAILBLAST_DKIM_SEALING_KEYS: a new key first, the old one after it. At
    # its next start campaigns reseals every DKIM key with the new one (the old key alone no longer
    # opens them), and a sender holding both keys signs with the domain's keys as before.
    dns_server.add_zone(DOMAIN)
    stub = domains_stub(stack)
    added = await stub.AddSendingDomain(domains_pb2.AddSendingDomainRequest(domain=DOMAIN), metadata=stack.metadata)
    publish(dns_server, added)
    assert (await stub.CheckSendingDomain(domains_pb2.SendingDomainRequest(domain_id=added.id),
                                          metadata=stack.metadata)).verified  # fmt: skip
    new_key = NEW_SEALING_KEY
    stack.campaigns_config = dataclasses.replace(stack.campaigns_config, dkim_sealing_keys=(new_key, DKIM_SEALING_KEY))
    await stack.restart_campaigns()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        sealed = [
            r[0] for r in await (await conn.execute("SELECT sealed_private_key FROM campaigns.dkim_keys")).fetchall()
        ]
    assert len(sealed) == 2
    for text in sealed:
        assert SecretBox((new_key,)).open(text).startswith("-----BEGIN PRIVATE KEY-----")
        with pytest.raises(InvalidToken):
            SecretBox((DKIM_SEALING_KEY,)).open(text)

    # The senders open the resealed keys: the next campaign is signed by the domain as before.
    await copied_to_the_senders(stack)
    list_id = await stack.create_list(["reader@example.net"])
    await stack.send_campaign([list_id], from_address=f"info@{DOMAIN}")
    await smtp_sink.wait_for(1, timeout=60)
    [caught] = smtp_sink.received_by()["reader@example.net"]
    [checks] = await asyncio.to_thread(verify_everywhere, [caught.data], dns_server)
    assert passing(checks) == EVERY_VERIFIER and {c.domain for c in checks} == {DOMAIN}, checks


async def test_the_cli_adds_a_domain_prints_each_record_on_its_own_line_and_checks_it(
    stack, dns_server, monkeypatch, capsys
):
    # `mailblast domains add` prints every record with its value alone on a line (to copy), `check`
    # says what is missing and, once the records are published, that the domain is verified.
    from cli import main as cli
    from tests.support.mtls import default_pki

    dns_server.add_zone(DOMAIN)
    monkeypatch.setenv("MAILBLAST_LISTS_ADDR", f"127.0.0.1:{stack.lists.grpc_port}")
    monkeypatch.setenv("MAILBLAST_CAMPAIGNS_ADDR", f"127.0.0.1:{stack.campaigns.grpc_port}")
    for name, value in default_pki().env("cli").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAILBLAST_TOKEN", stack.token)

    assert await asyncio.to_thread(cli.run, ["domains", "add", DOMAIN]) == 0
    out = capsys.readouterr().out
    [domain] = (await domains_stub(stack).ListSendingDomains(domains_pb2.ListSendingDomainsRequest(),
                                                             metadata=stack.metadata)).domains  # fmt: skip
    assert f"{DOMAIN} (id {domain.id}): not verified" in out
    lines = out.splitlines()
    for record in domain.records:
        assert f"    {record.value}" in lines
    assert f"  [missing] TXT mb1-rsa._domainkey.{DOMAIN}" in lines
    assert f"    ! no DKIM key is published at mb1-rsa._domainkey.{DOMAIN}" in lines

    publish(dns_server, domain)
    assert await asyncio.to_thread(cli.run, ["domains", "check", str(domain.id)]) == 0
    out = capsys.readouterr().out
    assert f"{DOMAIN} (id {domain.id}): verified" in out
    assert f"  [pass] CNAME mb-bounces.{DOMAIN}" in out.splitlines()
    assert await asyncio.to_thread(cli.run, ["domains", "ls"]) == 0
    assert f"{domain.id}\t{DOMAIN}\tverified" in capsys.readouterr().out.splitlines()
    # Deleted: its id is no longer found, and the command says so.
    assert await asyncio.to_thread(cli.run, ["domains", "rm", str(domain.id)]) == 0
    with pytest.raises(cli.CliError, match=f"not found: sending domain {domain.id} not found"):
        await asyncio.to_thread(cli.run, ["domains", "show", str(domain.id)])
