"""The sender against real PostgreSQL, NATS and an SMTP sink with STARTTLS: outcomes, retries, safety."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailblast.v1 import campaigns_pb2, events_pb2, sender_pb2, sender_pb2_grpc

from services.common import bus, verp
from services.common.identity import IDENTITY_HEADER, Principal
from services.common.mail import send_transactional
from services.common.privacy import email_hash
from services.sender.config import Config
from services.sender.dkim import dns_record, load_key
from services.sender.ledger import DeliveryStatus
from services.sender.service import Running, start
from tests.support.dkim_verify import EVERY_VERIFIER, passing, verify_everywhere
from tests.support.poll import poll

DKIM_DOMAIN = "mail.example.com"


def _write_key(path: Path, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(path)


@pytest.fixture
def dkim_files(tmp_path: Path) -> tuple[str, str]:
    """An RSA and an Ed25519 DKIM key on disk."""
    rsa_file = _write_key(tmp_path / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ed_file = _write_key(tmp_path / "ed.pem", ed25519.Ed25519PrivateKey.generate())
    return rsa_file, ed_file


@pytest.fixture
def make_config(database_url, nats_server, smtp_sink, tls_files, internal_key, dkim_files, pki):
    """Settings for a sender relaying to the sink over required TLS, signing with both keys."""

    def make(**overrides) -> Config:
        values = dict(
            database_url=database_url,
            nats_url=nats_server.url,
            nats_creds_file=nats_server.creds("sender"),
            internal_key=internal_key,
            return_path_domain="bounces.example.com",
            message_id_domain=DKIM_DOMAIN,
            unsubscribe_url="https://mail.example.com/u/",
            grpc_tls=pki.tls("sender"),
            grpc_bind="127.0.0.1:0",
            relay_host="127.0.0.1",
            relay_port=smtp_sink.port,
            tls="required",
            tls_ca_file=str(tls_files[0]),
            dkim_domain=DKIM_DOMAIN,
            dkim_selector="rsa1",
            dkim_key_file=dkim_files[0],
            dkim_ed25519_selector="ed1",
            dkim_ed25519_key_file=dkim_files[1],
            concurrency=16,
            retry_base_seconds=0.2,
            retry_max_seconds=1.0,
            give_up_seconds=3600.0,
            smtp_timeout_seconds=10.0,
        )
        values.update(overrides)
        return Config(**values)

    return make


def publish_dkim_keys(dns_server, config: Config) -> None:
    """Publish the sender's two public keys in the loopback DNS, as the domain's owner would."""
    dns_server.add_zone(DKIM_DOMAIN)
    for selector, path in (
        (config.dkim_selector, config.dkim_key_file),
        (config.dkim_ed25519_selector, config.dkim_ed25519_key_file),
    ):
        dns_server.add_txt(f"{selector}._domainkey.{DKIM_DOMAIN}", dns_record(load_key(DKIM_DOMAIN, selector, path)))


@pytest_asyncio.fixture
async def js(nats_server):
    """A JetStream client for the test's own publishing and reading (allowed everything)."""
    nc = await nats_server.connect()
    context = nc.jetstream()
    await bus.ensure_streams(context)
    try:
        yield context
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def reports(js):
    """Every DeliveryEvent published on mailblast.delivery.report, in arrival order."""
    events: list[events_pb2.DeliveryEvent] = []

    async def collect(msg) -> None:
        report = events_pb2.DeliveryReport()
        report.ParseFromString(msg.data)
        events.extend(report.events)
        await msg.ack()

    sub = await js.subscribe(bus.SUBJECT_DELIVERY_REPORT, cb=collect, stream=bus.STREAM_DELIVERY)
    try:
        yield events
    finally:
        await sub.unsubscribe()


@pytest_asyncio.fixture
async def sender(make_config):
    """A factory starting senders in-process; each is stopped after the test."""
    started: list[Running] = []

    async def run(**overrides) -> Running:
        running = await start(make_config(**overrides))
        started.append(running)
        return running

    try:
        yield run
    finally:
        for running in started:
            await running.stop(grace=5.0)


def make_batch(
    campaign_id: int,
    batch_number: int,
    recipients: list[tuple[int, str, str, dict]],
    *,
    organization_id: int = 7,
    subject: str = "「件名テスト」 {{ name }} さん",
    from_name: str = "山田 商店",
    from_address: str = "news@shop.example.com",
    html: str = "<p>Hello {{ name }} of {{ company }}</p>",
    text: str = "Hello {{ name }} of {{ company }}",
    created_at: float | None = None,
) -> events_pb2.SendBatch:
    """A SendBatch with the given (subscriber id, email, name, attributes) recipients."""
    batch = events_pb2.SendBatch(
        organization_id=organization_id,
        campaign_id=campaign_id,
        batch_number=batch_number,
        content=events_pb2.MessageContent(
            from_name=from_name,
            from_address=from_address,
            reply_to="replies@shop.example.com",
            subject=subject,
            html_body=html,
            text_body=text,
        ),
        recipients=[
            events_pb2.BatchRecipient(subscriber_id=sid, email=addr, name=name, attributes_json=json.dumps(attrs))
            for sid, addr, name, attrs in recipients
        ],
    )
    batch.created_at.FromSeconds(int(created_at if created_at is not None else time.time()))
    return batch


async def publish(js, batch: events_pb2.SendBatch, msg_id: str) -> None:
    """Publish a batch as campaigns does."""
    await bus.publish(js, bus.SUBJECT_SEND_BATCH, batch, msg_id=msg_id)


async def ledger(running: Running, campaign_id: int) -> dict[int, tuple]:
    """The ledger rows of a campaign by subscriber id."""
    async with running._pool.connection() as conn:
        cur = await conn.execute(
            "SELECT subscriber_id, status, smtp_code, smtp_message, tls, attempts, message_id"
            " FROM deliveries WHERE campaign_id = %s",
            (campaign_id,),
        )
        return {row[0]: row[1:] for row in await cur.fetchall()}


async def all_acked(js) -> bool:
    """True when the sender consumer has nothing pending or unacknowledged."""
    info = await js.consumer_info(bus.STREAM_SEND, "sender-batches")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_two_batches_delivered_once_over_tls_personalised_signed(
    sender, js, smtp_sink, make_config, signer, pki, dns_server
):
    # 200 recipients in two batches each arrive exactly once over TLS, with personal fields filled in
    # (escaped in HTML, not in text), the Japanese subject intact, List-Unsubscribe headers, and both
    # DKIM signatures verifying against the keys published in DNS, by dkimpy and by Mail::DKIM
    # (rsa-sha256) and OpenDKIM (ed25519-sha256); GetDelivery answers from the ledger.
    config = make_config()
    running = await sender()
    people = [(1000 + i, f"user{i}@example.net", f"User{i}", {"company": "A&B <Co>"}) for i in range(200)]
    await publish(js, make_batch(41, 1, people[:100]), "send-41-1")
    await publish(js, make_batch(41, 2, people[100:]), "send-41-2")
    messages = await smtp_sink.wait_for(200, timeout=60)
    await poll(lambda: _count(running, 41, "sent", 200), what="200 sent in the ledger")
    await poll(lambda: all_acked(js), what="batches acked")

    by_rcpt = smtp_sink.received_by()
    assert sorted(by_rcpt) == sorted(p[1] for p in people)
    assert all(len(copies) == 1 for copies in by_rcpt.values())
    assert len(messages) == 200 and all(m.tls for m in messages)

    publish_dkim_keys(dns_server, config)
    checks = await asyncio.to_thread(verify_everywhere, [by_rcpt[p[1]][0].data for p in people], dns_server)
    for (_, addr, _, _), message_checks in zip(people, checks, strict=True):
        assert passing(message_checks) == EVERY_VERIFIER, (addr, message_checks)

    for sid, addr, name, _ in people:
        [caught] = by_rcpt[addr]
        ref = verp.RecipientRef(7, 41, sid)
        assert verp.parse_return_path(config.internal_key, caught.mail_from) == ref
        parsed = email.message_from_bytes(caught.data, policy=email.policy.default)
        assert str(parsed["Subject"]) == f"「件名テスト」 {name} さん"
        assert "山田 商店" in str(parsed["From"])
        assert verp.parse_message_id(config.internal_key, parsed["Message-ID"]) == ref
        token = parsed["List-Unsubscribe"].strip("<>").removeprefix("https://mail.example.com/u/")
        assert verp.parse_unsubscribe_token(config.internal_key, token) == ref
        assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert parsed.get_body(("plain",)).get_content().strip() == f"Hello {name} of A&B <Co>"
        assert parsed.get_body(("html",)).get_content().strip() == f"<p>Hello {name} of A&amp;B &lt;Co&gt;</p>"
        signatures = parsed.get_all("DKIM-Signature")
        assert len(signatures) == 2
    assert b"a=rsa-sha256" in messages[0].data and b"a=ed25519-sha256" in messages[0].data

    rows = await ledger(running, 41)
    assert all(row[0] == "sent" and row[1] == 250 and row[3] is True and row[4] == 1 for row in rows.values())

    async with pki.channel(running.grpc_port, "gateway") as channel:
        stub = sender_pb2_grpc.SenderServiceStub(channel)
        own = [
            (IDENTITY_HEADER, signer.sign(Principal(organization_id=7, scopes=("read",), service="gateway"), "sender"))
        ]
        delivery = await stub.GetDelivery(
            sender_pb2.GetDeliveryRequest(campaign_id=41, subscriber_id=1005), metadata=own
        )
        assert (delivery.status, delivery.email, delivery.tls, delivery.smtp_code) == (
            sender_pb2.DELIVERY_STATUS_SENT,
            "user5@example.net",
            True,
            250,
        )
        other = [
            (IDENTITY_HEADER, signer.sign(Principal(organization_id=8, scopes=("read",), service="gateway"), "sender"))
        ]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetDelivery(sender_pb2.GetDeliveryRequest(campaign_id=41, subscriber_id=1005), metadata=other)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_without_a_relay_mail_goes_to_the_mx_the_dns_names(sender, js, smtp_sink, make_config, dns_server):
    # With SENDER_RELAY_HOST unset and SENDER_DNS_RESOLVER pointing at the loopback DNS, recipients at
    # example.net are delivered, signed, to the host its MX record names (the sink, on localhost), and
    # a recipient whose domain publishes a null MX is rejected without any SMTP attempt.
    dns_server.add_zone("example.net")
    dns_server.add("example.net", "MX", "10 localhost.")
    dns_server.add("nomail.example.net", "MX", "0 .")
    overrides = dict(relay_host="", dns_resolver=dns_server.address, mx_port=smtp_sink.port)
    config = make_config(**overrides)
    running = await sender(**overrides)
    people = [(2000 + i, f"mx{i}@example.net", f"Mx{i}", {"company": "MX"}) for i in range(3)]
    nomail = (2100, "someone@nomail.example.net", "Nobody", {"company": "-"})
    await publish(js, make_batch(43, 1, [*people, nomail]), "send-43-1")
    messages = await smtp_sink.wait_for(3, timeout=30)
    await poll(lambda: _count(running, 43, "sent", 3), what="3 sent in the ledger")
    await poll(lambda: _count(running, 43, DeliveryStatus.REJECTED, 1), what="the null-MX recipient rejected")

    assert sorted(m.rcpt_tos[0] for m in messages) == [p[1] for p in people]
    assert all(m.tls for m in messages)
    rows = await ledger(running, 43)
    assert "accepts no mail (null MX)" in rows[2100][2]
    asked = {(q.name, q.rtype) for q in dns_server.queries}
    assert {("example.net.", "MX"), ("nomail.example.net.", "MX")} <= asked
    publish_dkim_keys(dns_server, config)
    checks = await asyncio.to_thread(verify_everywhere, [m.data for m in messages], dns_server)
    assert all(passing(message_checks) == EVERY_VERIFIER for message_checks in checks), checks


async def _count(running: Running, campaign_id: int, status: str, expected: int) -> bool:
    rows = await ledger(running, campaign_id)
    return sum(1 for row in rows.values() if row[0] == status) >= expected


async def test_temporary_refusal_is_retried_and_delivered_once(sender, js, smtp_sink, reports):
    # The sink answers 450 to some recipients at first: they are deferred (reported with attempt 1),
    # retried after the backoff, and delivered exactly once; the others are not sent again.
    smtp_sink.reply = lambda addr, seen: "450 4.2.0 mailbox busy" if addr.startswith("slow") and seen == 0 else None
    running = await sender()
    people = [(i, f"{'slow' if i % 3 == 0 else 'fast'}{i}@example.net", f"P{i}", {}) for i in range(1, 13)]
    await publish(js, make_batch(42, 1, people), "send-42-1")
    await poll(lambda: _count(running, 42, "sent", 12), what="all sent after the retry")
    await poll(lambda: all_acked(js), what="batch acked")
    by_rcpt = smtp_sink.received_by()
    assert sorted(by_rcpt) == sorted(p[1] for p in people)
    assert all(len(copies) == 1 for copies in by_rcpt.values())
    rows = await ledger(running, 42)
    for sid, addr, _, _ in people:
        assert rows[sid][4] == (2 if addr.startswith("slow") else 1)
    await poll(lambda: _async(len(reports) >= 16), what="reports")
    slow_events = [(e.outcome, e.attempt, e.smtp_code) for e in reports if e.email == "slow3@example.net"]
    assert slow_events == [(events_pb2.DELIVERY_OUTCOME_DEFERRED, 1, 450), (events_pb2.DELIVERY_OUTCOME_SENT, 2, 250)]
    assert next(e for e in reports if e.email == "slow3@example.net").enhanced_status == "4.2.0"


async def _async(value):
    return value


async def test_permanent_refusal_is_rejected_reported_and_not_retried(sender, js, smtp_sink, reports):
    # A 550 is a hard failure: REJECTED in the ledger and in a DeliveryReport with its enhanced status,
    # offered once only; the batch is acknowledged.
    smtp_sink.reply = lambda addr, seen: "550 5.1.1 no such user" if addr == "gone@example.net" else None
    running = await sender()
    people = [(1, "gone@example.net", "Gone", {}), (2, "here@example.net", "Here", {})]
    await publish(js, make_batch(43, 1, people), "send-43-1")
    await poll(lambda: all_acked(js), what="batch acked")
    rows = await ledger(running, 43)
    assert rows[1][:3] == ("rejected", 550, "5.1.1 no such user") and rows[2][0] == "sent"
    await poll(lambda: _async(len(reports) >= 2), what="reports")
    [gone] = [e for e in reports if e.subscriber_id == 1]
    assert (gone.outcome, gone.smtp_code, gone.enhanced_status) == (events_pb2.DELIVERY_OUTCOME_REJECTED, 550, "5.1.1")
    assert smtp_sink._offers["gone@example.net"] == 1
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["here@example.net"]]


async def test_redelivered_batch_sends_nothing_twice(sender, js, smtp_sink):
    # The same batch published again under another message id is acknowledged without a second copy.
    running = await sender()
    people = [(i, f"once{i}@example.net", f"O{i}", {}) for i in range(1, 11)]
    await publish(js, make_batch(44, 1, people), "send-44-1")
    await smtp_sink.wait_for(10, timeout=30)
    await poll(lambda: all_acked(js), what="first copy acked")
    await publish(js, make_batch(44, 1, people), "send-44-1-again")
    await poll(lambda: _delivered_twice(js), what="second copy taken")
    await poll(lambda: all_acked(js), what="second copy acked")
    assert len(smtp_sink.messages) == 10
    assert all(row[0] == "sent" and row[4] == 1 for row in (await ledger(running, 44)).values())


async def _delivered_twice(js) -> bool:
    info = await js.consumer_info(bus.STREAM_SEND, "sender-batches")
    return info.delivered.stream_seq >= 2


async def test_header_injection_and_template_errors_fail_clearly(sender, js, smtp_sink, reports):
    # CR/LF in the subject, the From name, or a personal field rendered into the subject never yields an
    # extra header: those recipients fail (REJECTED, code 0) naming the field; a template syntax error
    # fails its batch saying so; clean recipients are still delivered.
    running = await sender()
    await publish(
        js, make_batch(45, 1, [(1, "a@example.net", "A", {})], subject="Hi\r\nBcc: evil@attacker.example"), "s45"
    )
    await publish(
        js, make_batch(46, 1, [(1, "b@example.net", "B", {})], from_name="Shop\r\nBcc: evil@attacker.example"), "s46"
    )
    await publish(
        js,
        make_batch(
            47,
            1,
            [(1, "c@example.net", "Eve\r\nBcc: evil@attacker.example", {}), (2, "d@example.net", "Dan", {})],
            subject="Hello {{ name }}",
        ),
        "s47",
    )
    await publish(js, make_batch(48, 1, [(1, "e@example.net", "E", {})], html="<p>{{ name </p>"), "s48")
    await publish(js, make_batch(49, 1, [(1, "not an address", "F", {})]), "s49")
    await poll(lambda: all_acked(js), what="all batches settled")
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["d@example.net"]]
    assert b"attacker" not in smtp_sink.messages[0].data
    expectations = {
        (45, 1): "subject",
        (46, 1): "From name",
        (47, 1): "subject (after personal fields)",
        (48, 1): "template error",
        (49, 1): "recipient address",
    }
    for (campaign, sid), words in expectations.items():
        row = (await ledger(running, campaign))[sid]
        assert row[0] == "rejected" and row[1] == 0 and words in row[2], row
    assert (await ledger(running, 47))[2][0] == "sent"
    await poll(lambda: _async(len(reports) >= 6), what="reports")
    assert {e.campaign_id for e in reports if e.outcome == events_pb2.DELIVERY_OUTCOME_REJECTED} == {45, 46, 47, 48, 49}


async def test_over_limit_templates_fail_their_recipients_permanently_and_the_sender_goes_on(
    sender, js, smtp_sink, reports
):
    # A batch whose template breaks a render limit whatever the data (saved before the limits existed,
    # or published by hand) fails every recipient once, REJECTED with a reason naming the limit, and is
    # not retried. A template that breaks a limit only with one subscriber's data (a loop as long as
    # their field says) fails that subscriber alone; the others are delivered. A later ordinary batch
    # is delivered too: nothing hangs.
    running = await sender()
    nested = "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}"
    await publish(
        js, make_batch(60, 1, [(1, "a@example.net", "A", {}), (2, "b@example.net", "B", {})], html=nested), "s60"
    )
    await publish(
        js, make_batch(61, 1, [(1, "c@example.net", "C", {})], text="{% set a = 'x' * 100000000 %}{{ a }}"), "s61"
    )
    per_data = "{% for i in range(count) %}{% for j in range(count) %}.{% endfor %}{% endfor %}"
    people = [(1, "small@example.net", "S", {"count": 3}), (2, "big@example.net", "L", {"count": 1000})]
    await publish(js, make_batch(62, 1, people, html=per_data), "s62")
    await publish(js, make_batch(63, 1, [(1, "after@example.net", "D", {})]), "s63")
    await poll(lambda: all_acked(js), what="all batches settled")
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == ["after@example.net", "small@example.net"]
    loops = "template limit: HTML body: the template runs more than 10000 loop iterations"
    for campaign, sid, reason in (
        (60, 1, loops),
        (60, 2, loops),
        (61, 1, "template limit: text body: the template builds a value of more than 1000000 characters"),
        (62, 2, "template limit: the template runs more than 10000 loop iterations"),
    ):
        status, code, message = (await ledger(running, campaign))[sid][:3]
        assert (status, code) == ("rejected", 0) and message.startswith(reason), message
    assert (await ledger(running, 62))[1][0] == "sent"
    await poll(lambda: _async(len(reports) >= 6), what="reports")


async def test_recipient_always_deferred_expires_after_give_up_age(sender, js, smtp_sink, reports):
    # A recipient refused with 450 on every offer is retried until the batch reaches the give-up age,
    # then becomes EXPIRED (final) and the batch is acknowledged.
    smtp_sink.reply = lambda addr, seen: "450 4.7.1 greylisted" if addr == "never@example.net" else None
    running = await sender(give_up_seconds=1.5)
    await publish(js, make_batch(50, 1, [(1, "never@example.net", "N", {}), (2, "ok@example.net", "K", {})]), "s50")
    await poll(lambda: _count(running, 50, "expired", 1), timeout=30, what="expiry")
    await poll(lambda: all_acked(js), what="batch acked")
    rows = await ledger(running, 50)
    assert rows[1][:2] == ("expired", 450) and rows[1][4] >= 2
    assert rows[2][0] == "sent" and rows[2][4] == 1
    await poll(lambda: _async(any(e.outcome == events_pb2.DELIVERY_OUTCOME_EXPIRED for e in reports)), what="report")
    assert len(smtp_sink.messages) == 1


async def test_undecodable_payload_goes_to_dead_letters(sender, js):
    # Bytes that are not a SendBatch are kept on the dead-letter stream, not retried.
    await sender()
    await js.publish(bus.SUBJECT_SEND_BATCH, b"\xff\xff not protobuf")
    sub = await js.pull_subscribe(f"{bus.SUBJECT_DEAD_LETTER}.>", stream=bus.STREAM_DEAD_LETTER)
    [dead] = await sub.fetch(1, timeout=20)
    assert dead.data == b"\xff\xff not protobuf"
    assert "SendBatch" in dead.headers["Mailblast-Dead-Reason"]
    await poll(lambda: all_acked(js), what="payload terminated")


def make_transactional(
    message_key: str,
    *,
    to_address: str = "taro@example.net",
    to_name: str = "山田 太郎",
    subject: str = "{{ name }}様 パスワードの再設定",
    text: str = "{{ name }}様\nこちらから再設定してください: {{ link }}",
    html: str = "<p>{{ name }}様 <a href='{{ link }}'>再設定</a></p>",
    variables: dict | None = None,
    category: str = "auth.password_reset",
    organization_id: int = 7,
) -> events_pb2.TransactionalMessage:
    """A TransactionalMessage as auth would send for a password reset."""
    return events_pb2.TransactionalMessage(
        organization_id=organization_id,
        message_key=message_key,
        to_address=to_address,
        to_name=to_name,
        content=events_pb2.MessageContent(
            from_name="mailblast",
            from_address="noreply@mail.example.com",
            subject=subject,
            text_body=text,
            html_body=html,
        ),
        variables_json=json.dumps(variables if variables is not None else {"link": "https://x.example/r?t=a&b"}),
        category=category,
    )


async def transactional_ledger(running: Running) -> dict[str, tuple]:
    """The transactional ledger rows by message key."""
    async with running._pool.connection() as conn:
        cur = await conn.execute(
            "SELECT message_key, status, smtp_code, smtp_message, tls, attempts, message_id, category"
            " FROM transactional_deliveries"
        )
        return {row[0]: row[1:] for row in await cur.fetchall()}


async def transactional_acked(js, delivered: int = 0) -> bool:
    """True when sender-transactional has taken at least `delivered` messages and settled them all."""
    info = await js.consumer_info(bus.STREAM_SEND, "sender-transactional")
    return info.delivered.stream_seq >= delivered and info.num_pending == 0 and info.num_ack_pending == 0


async def test_transactional_message_delivered_once_over_tls_signed_and_personalised(
    sender, js, smtp_sink, make_config, reports, dns_server
):
    # A password reset published with send_transactional reaches the sink once over TLS, rendered with
    # the recipient's name and the variables (escaped in HTML), signed with both DKIM keys (checked by
    # dkimpy, Mail::DKIM and OpenDKIM against the keys in DNS), from the
    # system return path, with a Message-ID stable per key and no List-Unsubscribe (auth.* mail).
    # Published again with the same key, and once more under another Nats-Msg-Id, it is not resent.
    config = make_config()
    running = await sender()
    message = make_transactional("auth.reset.42.7f3a")
    await send_transactional(js, message)
    [caught] = await smtp_sink.wait_for(1, timeout=30)
    await poll(lambda: transactional_acked(js, 1), what="message acked")
    assert caught.tls and caught.rcpt_tos == ["taro@example.net"]
    assert caught.mail_from == "bounces@bounces.example.com"
    parsed = email.message_from_bytes(caught.data, policy=email.policy.default)
    assert str(parsed["Subject"]) == "山田 太郎様 パスワードの再設定"
    assert parsed["To"].addresses[0].display_name == "山田 太郎"
    assert parsed.get_body(("plain",)).get_content().strip().endswith("https://x.example/r?t=a&b")
    assert "href='https://x.example/r?t=a&amp;b'" in parsed.get_body(("html",)).get_content()
    assert parsed["List-Unsubscribe"] is None and parsed["List-Unsubscribe-Post"] is None
    assert parsed["Message-ID"].startswith("<tx.7.") and parsed["Message-ID"].endswith("@mail.example.com>")
    assert verp.parse_message_id(config.internal_key, parsed["Message-ID"]) is None
    publish_dkim_keys(dns_server, config)
    [checks] = await asyncio.to_thread(verify_everywhere, [caught.data], dns_server)
    assert passing(checks) == EVERY_VERIFIER, checks

    await send_transactional(js, make_transactional("auth.reset.42.7f3a"))  # dropped by NATS de-duplication
    await bus.publish(js, bus.transactional_subject(7), message, msg_id="republished-under-another-id")
    await poll(lambda: transactional_acked(js, 2), what="second copy taken and acked")
    assert len(smtp_sink.messages) == 1
    rows = await transactional_ledger(running)
    assert rows["auth.reset.42.7f3a"][:5] == ("sent", 250, rows["auth.reset.42.7f3a"][2], True, 1)
    assert rows["auth.reset.42.7f3a"][5] == parsed["Message-ID"]
    await poll(lambda: _async(len(reports) >= 1), what="report")
    [event] = reports
    assert (event.campaign_id, event.subscriber_id, event.message_key, event.category, event.outcome) == (
        0,
        0,
        "auth.reset.42.7f3a",
        "auth.password_reset",
        events_pb2.DELIVERY_OUTCOME_SENT,
    )
    assert event.message_id == parsed["Message-ID"]


async def test_transactional_temporary_refusal_then_accepted_is_delivered_once(sender, js, smtp_sink, reports):
    # The sink answers 451 to the first offer: the message is deferred (reported, attempt 1), retried
    # after the backoff, accepted, and delivered exactly once; a non-auth category keeps List-Unsubscribe.
    smtp_sink.reply = lambda addr, seen: "451 4.7.1 greylisted, try later" if seen == 0 else None
    running = await sender()
    await send_transactional(
        js, make_transactional("lists.confirm.9.1", to_address="new@example.net", category="lists.confirm")
    )
    await poll(lambda: _transactional_status(running, "lists.confirm.9.1", "sent"), what="sent after the retry")
    await poll(lambda: transactional_acked(js, 1), what="message acked")
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["new@example.net"]]
    assert smtp_sink._offers["new@example.net"] == 2
    parsed = email.message_from_bytes(smtp_sink.messages[0].data, policy=email.policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (await transactional_ledger(running))["lists.confirm.9.1"][4] == 2
    await poll(lambda: _async(len(reports) >= 2), what="reports")
    assert [(e.outcome, e.attempt, e.smtp_code, e.message_key) for e in reports] == [
        (events_pb2.DELIVERY_OUTCOME_DEFERRED, 1, 451, "lists.confirm.9.1"),
        (events_pb2.DELIVERY_OUTCOME_SENT, 2, 250, "lists.confirm.9.1"),
    ]


async def _transactional_status(running: Running, message_key: str, status: str) -> bool:
    row = (await transactional_ledger(running)).get(message_key)
    return row is not None and row[0] == status


async def test_transactional_header_injection_is_refused_and_nothing_injected(sender, js, smtp_sink, reports):
    # CR/LF in to_name, in the subject, or in a variable rendered into the subject is refused: the
    # message is REJECTED (code 0) naming the field, never delivered, never retried; a clean one is sent.
    running = await sender()
    bad = {
        "k.name": make_transactional("k.name", to_name="Eve\r\nBcc: evil@attacker.example", subject="Reset"),
        "k.subject": make_transactional("k.subject", subject="Reset\r\nBcc: evil@attacker.example"),
        "k.variable": make_transactional(
            "k.variable", subject="Hi {{ who }}", variables={"who": "x\nBcc: evil@attacker.example"}
        ),
    }
    for message in bad.values():
        await send_transactional(js, message)
    await send_transactional(js, make_transactional("k.clean", to_address="clean@example.net"))
    await poll(lambda: transactional_acked(js, 4), what="all settled")
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["clean@example.net"]]
    assert b"attacker" not in smtp_sink.messages[0].data
    rows = await transactional_ledger(running)
    for key, words in (("k.name", "recipient name"), ("k.subject", "subject"), ("k.variable", "subject")):
        assert rows[key][:2] == ("rejected", 0) and words in rows[key][2], rows[key]
    assert rows["k.clean"][0] == "sent"
    await poll(lambda: _async(len(reports) >= 4), what="reports")
    rejected_keys = {e.message_key for e in reports if e.outcome == events_pb2.DELIVERY_OUTCOME_REJECTED}
    assert rejected_keys == set(bad)


async def test_undecodable_transactional_payload_goes_to_dead_letters(sender, js):
    # Bytes that are not a TransactionalMessage are kept on the dead-letter stream, not retried.
    await sender()
    await js.publish(bus.transactional_subject(7), b"\xff\xff not protobuf")
    sub = await js.pull_subscribe(f"{bus.SUBJECT_DEAD_LETTER}.>", stream=bus.STREAM_DEAD_LETTER)
    [dead] = await sub.fetch(1, timeout=20)
    assert dead.data == b"\xff\xff not protobuf"
    assert "TransactionalMessage" in dead.headers["Mailblast-Dead-Reason"]
    await poll(lambda: transactional_acked(js, 1), what="payload terminated")


async def copier_settled(js, durable: str, delivered: int) -> bool:
    """True when a copy's durable has taken at least `delivered` changes and settled them all."""
    info = await js.consumer_info(durable_stream(durable), durable)
    return info.delivered.stream_seq >= delivered and info.num_pending == 0 and info.num_ack_pending == 0


def durable_stream(durable: str) -> str:
    """The stream a copy's durable reads."""
    return bus.STREAM_SUPPRESSION if durable == "sender-suppressions" else bus.STREAM_CAMPAIGN_STATE


async def announce_suppression(js, internal_key: bytes, address: str, version: int, reason=None) -> None:
    """Publish a SuppressionChanged as lists does (reason None: taken off the list)."""
    hashed = email_hash(internal_key, address)
    event = events_pb2.SuppressionChanged(
        organization_id=7, email_hash=hashed, suppressed=reason is not None, reason=reason or 0, version=version
    )
    await bus.publish(js, bus.suppression_subject(7, hashed), event)


async def announce_state(js, campaign_id: int, state, version: int) -> None:
    """Publish a CampaignStateChanged as campaigns does."""
    event = events_pb2.CampaignStateChanged(organization_id=7, campaign_id=campaign_id, state=state, version=version)
    await bus.publish(js, bus.campaign_state_subject(7, campaign_id), event)


async def test_a_suppression_lists_announces_withholds_the_address_until_it_is_lifted(
    sender, js, smtp_sink, internal_key, reports
):
    # Lists announces that an address unsubscribed: the sender's copy takes it, and a batch then
    # withholds that recipient (suppressed, reported so, never offered) while the others go out; nobody
    # was asked. Lists then lifts it, and an older change arriving after the lift changes nothing: a test
    # send to the address is delivered.
    running = await sender()
    await announce_suppression(js, internal_key, "Gone@example.net", 5, events_pb2.SUPPRESSION_REASON_UNSUBSCRIBED)
    await poll(lambda: copier_settled(js, "sender-suppressions", 1), what="suppression copied")
    await publish(js, make_batch(70, 1, [(1, "gone@example.net", "G", {}), (2, "kept@example.net", "K", {})]), "s70")
    await poll(lambda: all_acked(js), what="batch acked")
    rows = await ledger(running, 70)
    assert (rows[1][0], rows[1][2], rows[2][0]) == ("suppressed", "suppressed: unsubscribed", "sent")
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["kept@example.net"]]
    await poll(lambda: _async(len(reports) >= 2), what="reports")
    assert {e.subscriber_id: e.outcome for e in reports} == {
        1: events_pb2.DELIVERY_OUTCOME_SUPPRESSED,
        2: events_pb2.DELIVERY_OUTCOME_SENT,
    }
    await announce_suppression(js, internal_key, "gone@example.net", 6)
    await announce_suppression(js, internal_key, "gone@example.net", 4, events_pb2.SUPPRESSION_REASON_MANUAL)
    await poll(lambda: copier_settled(js, "sender-suppressions", 3), what="changes copied")
    await send_transactional(
        js, make_transactional("campaigns.test.70", to_address="gone@example.net", category="campaigns.test")
    )
    await poll(lambda: transactional_acked(js, 1), what="test send settled")
    assert [m.rcpt_tos for m in smtp_sink.messages][-1] == ["gone@example.net"]


async def test_a_campaign_paused_in_the_copy_holds_its_batch_until_resumed_and_cancelled_drops_it(
    sender, js, smtp_sink, span_exporter
):
    # Campaigns announces campaign 71 paused and 72 cancelled. A batch of 71 is looked at and held back
    # without a message going out; once 71 is announced sending again, its batch is delivered. The batch
    # of 72 is dropped unsent. The sender asked campaigns nothing.
    span_exporter.clear()
    await sender(pause_recheck_seconds=0.3)
    await announce_state(js, 71, campaigns_pb2.CAMPAIGN_STATE_PAUSED, 3)
    await announce_state(js, 72, campaigns_pb2.CAMPAIGN_STATE_CANCELLED, 4)
    await poll(lambda: copier_settled(js, "sender-campaign-states", 2), what="states copied")
    await publish(js, make_batch(71, 1, [(1, "held@example.net", "H", {})]), "s71")
    await publish(js, make_batch(72, 1, [(1, "dropped@example.net", "D", {})]), "s72")

    def halted(campaign_id: int, state: str) -> int:
        return sum(
            1
            for s in span_exporter.get_finished_spans()
            if s.name == "send batch"
            and s.attributes.get("mailblast.campaign_id") == campaign_id
            and s.attributes.get("mailblast.halted") == state
        )

    await poll(lambda: _async(halted(71, "paused") >= 2 and halted(72, "cancelled") == 1), what="batches halted")
    assert smtp_sink.messages == []
    await announce_state(js, 71, campaigns_pb2.CAMPAIGN_STATE_SENDING, 5)
    [caught] = await smtp_sink.wait_for(1, timeout=30)
    assert caught.rcpt_tos == ["held@example.net"]
    await poll(lambda: all_acked(js), what="batches settled")
    assert len(smtp_sink.messages) == 1


async def test_copy_changes_that_name_nothing_go_to_dead_letters(sender, js):
    # A suppression change without a keyed hash, or a state change without a version, cannot be applied:
    # each is kept on the dead-letter stream with the reason, and the copy goes on.
    await sender()
    await bus.publish(
        js, bus.suppression_subject(7, "x"), events_pb2.SuppressionChanged(organization_id=7, email_hash="x", version=1)
    )
    await bus.publish(
        js, bus.campaign_state_subject(7, 9), events_pb2.CampaignStateChanged(organization_id=7, campaign_id=9)
    )
    sub = await js.pull_subscribe(f"{bus.SUBJECT_DEAD_LETTER}.>", stream=bus.STREAM_DEAD_LETTER)
    dead = []
    while len(dead) < 2:
        dead += await sub.fetch(2 - len(dead), timeout=20)
    reasons = sorted(m.headers["Mailblast-Dead-Reason"] for m in dead)
    assert reasons == [
        "CampaignStateChanged lacks an organisation, a campaign or a version",
        "SuppressionChanged lacks an organisation, a keyed hash or a version",
    ]
