"""The bounce service with real PostgreSQL, NATS, SMTP over sockets and gRPC on port 0."""

from __future__ import annotations

import asyncio
import smtplib
import time

import aiosmtplib
import nats
import pytest
import pytest_asyncio
from mailblast.v1 import bounce_pb2, bounce_pb2_grpc, events_pb2

from dev.embedded import free_port
from services.bounce.config import Config
from services.bounce.service import start
from services.common import bus
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.common.verp import RecipientRef, message_id, return_path
from tests.support.mtls import default_pki

ORG, CAMPAIGN, SUBSCRIBER = 7, 42, 1007


def dsn(key: bytes, ref: RecipientRef, recipient: str, status: str, diagnostic: str) -> bytes:
    """A DSN as a receiving Postfix would return it for one of our messages."""
    original_id = message_id(key, ref, "mail.example.com")
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {return_path(key, ref, 'bounces.example.com')}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <20250101120000.ABC123@mx.example.net>\r\n"
        "Date: Wed, 01 Jan 2025 12:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\nContent-Type: text/plain\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        f"<{recipient}>: {diagnostic}\r\n\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        "Action: failed\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mail.example.org\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {original_id}\r\n"
        f"To: {recipient}\r\n"
        "Subject: Our newsletter\r\n\r\n"
        "--b1--\r\n"
    ).encode()


async def send_returned_mail(port: int, rcpt: str, message: bytes) -> None:
    """Deliver a returned message the way MTAs do: null envelope sender (MAIL FROM:<>)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await client.connect()
    try:
        await client.mail("")
        await client.rcpt(rcpt)
        await client.data(message)
    finally:
        await client.quit()


@pytest_asyncio.fixture
async def service(database_url: str, nats_url: str, internal_key: bytes):
    """A running bounce service whose consumer is stepped by the test (run_once)."""
    config = Config(
        database_url=database_url,
        nats_url=nats_url,
        internal_key=internal_key,
        grpc_tls=default_pki().tls("bounce"),
        grpc_bind="127.0.0.1:0",
        smtp_bind=f"127.0.0.1:{free_port()}",
    )
    running = await start(config, run_consumers=False)
    try:
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture
async def js(nats_url: str):
    """A JetStream client for the test's own publishing and reading."""
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.drain()


async def bounce_events(js, want: int, timeout: float = 10.0) -> list[events_pb2.BounceEvent]:
    """Read the BounceEvents on the stream until `want` arrived (or the deadline passes)."""
    sub = await js.pull_subscribe(bus.SUBJECT_BOUNCE_RECORDED, stream=bus.STREAM_BOUNCE)
    events: list[events_pb2.BounceEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < want and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(10, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            events.append(bus.decode(msg, events_pb2.BounceEvent))
            await msg.ack()
    await sub.unsubscribe()
    return events


async def list_bounces(grpc_port: int, signer: IdentitySigner, org: int, campaign: int):
    """Call ListBounces as a reader of `org`, relayed by the console."""
    principal = Principal(organization_id=org, user_id=1, scopes=("read",), service="gateway")
    async with default_pki().channel(grpc_port, "gateway") as channel:
        stub = bounce_pb2_grpc.BounceServiceStub(channel)
        return await stub.ListBounces(
            bounce_pb2.ListBouncesRequest(campaign_id=campaign),
            metadata=[(IDENTITY_HEADER, signer.sign(principal, "bounce"))],
            timeout=10,
        )


async def test_dsn_to_verp_address_records_one_hard_bounce(service, js, internal_key, signer):
    # A remote MTA returns a 5.1.1 DSN to the VERP address of one subscriber's copy; the bounce is
    # published once (even when the same DSN arrives twice) and listed for the campaign's organisation.
    ref = RecipientRef(ORG, CAMPAIGN, SUBSCRIBER)
    rcpt = return_path(internal_key, ref, "any-domain.example")
    message = dsn(internal_key, ref, "gone@example.org", "5.1.1", "550 5.1.1 <gone@example.org>: User unknown")
    for _ in range(2):
        await send_returned_mail(service.smtp_port, rcpt, message)

    events = await bounce_events(js, want=1)
    assert len(events) == 1
    event = events[0]
    assert (event.organization_id, event.campaign_id, event.subscriber_id) == (ORG, CAMPAIGN, SUBSCRIBER)
    assert event.email == "gone@example.org"
    assert event.kind == events_pb2.BOUNCE_KIND_HARD
    assert event.source == events_pb2.BOUNCE_SOURCE_DSN
    assert event.status == "5.1.1"
    info = await js.stream_info(bus.STREAM_BOUNCE)
    assert info.state.messages == 1

    listed = await list_bounces(service.grpc_port, signer, ORG, CAMPAIGN)
    assert [(b.subscriber_id, b.email, b.kind, b.source) for b in listed.bounces] == [
        (SUBSCRIBER, "gone@example.org", "hard", "dsn")
    ]
    # Another organisation asking for the same campaign id sees nothing.
    assert list((await list_bounces(service.grpc_port, signer, ORG + 1, CAMPAIGN)).bounces) == []


async def test_mailbox_full_dsn_is_soft(service, js, internal_key):
    # A 5.2.2 mailbox-full DSN is permanent by its code but counted soft: the address still exists.
    ref = RecipientRef(ORG, CAMPAIGN, 2)
    rcpt = return_path(internal_key, ref, "bounces.example.com")
    message = dsn(internal_key, ref, "full@example.org", "5.2.2", "552 5.2.2 Mailbox full, quota exceeded")
    await send_returned_mail(service.smtp_port, rcpt, message)
    (event,) = await bounce_events(js, want=1)
    assert event.kind == events_pb2.BOUNCE_KIND_SOFT
    assert event.subscriber_id == 2


async def test_forged_verp_address_is_refused_at_rcpt(service, internal_key):
    # A return path with a wrong signature (or none) is not ours: RCPT is refused with 550 5.1.1.
    forged = return_path(b"another key entirely!!", RecipientRef(ORG, CAMPAIGN, 3), "bounces.example.com")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port)
    await client.connect()
    try:
        await client.mail("")
        for address in (forged, "postmaster@bounces.example.com"):
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt(address)
            assert refused.value.code == 550
            assert "5.1.1 no such bounce address" in refused.value.message
    finally:
        await client.quit()


async def test_bare_lf_in_data_is_refused_and_nothing_recorded(service, js, internal_key, signer):
    # SMTP smuggling: a DATA payload with a bare LF is refused (raw bytes over a real socket), nothing kept.
    ref = RecipientRef(ORG, CAMPAIGN, 4)
    rcpt = return_path(internal_key, ref, "bounces.example.com")
    body = dsn(internal_key, ref, "x@example.org", "5.1.1", "550 5.1.1 User unknown")
    smuggled = body.replace(b"\r\n\r\n--b1\r\n", b"\r\n\n.\nMAIL FROM:<a@b>\r\n\r\n--b1\r\n", 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", service.smtp_port)

    async def reply() -> bytes:
        lines = [await reader.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(await reader.readline())
        return b"".join(lines)

    async def command(line: bytes) -> bytes:
        writer.write(line)
        await writer.drain()
        return await reply()

    assert (await reply()).startswith(b"220")
    assert (await command(b"EHLO client.example\r\n")).startswith(b"250")
    assert (await command(b"MAIL FROM:<>\r\n")).startswith(b"250")
    assert (await command(f"RCPT TO:<{rcpt}>\r\n".encode())).startswith(b"250")
    assert (await command(b"DATA\r\n")).startswith(b"354")
    answer = await command(smuggled + b"\r\n.\r\n")
    assert answer.startswith(b"550"), answer
    assert b"bare LF" in answer
    assert (await command(b"QUIT\r\n")).startswith(b"221")
    writer.close()
    await writer.wait_closed()

    assert list((await list_bounces(service.grpc_port, signer, ORG, CAMPAIGN)).bounces) == []
    assert (await js.stream_info(bus.STREAM_BOUNCE)).state.messages == 0


async def test_smtplib_data_with_bare_lf_is_refused(service, internal_key):
    # The same with the standard library client: smtplib.sendmail given bytes sends them unchanged
    # (run in a thread, since the service answers on this test's event loop).
    rcpt = return_path(internal_key, RecipientRef(ORG, CAMPAIGN, 5), "bounces.example.com")

    def send() -> int:
        with smtplib.SMTP("127.0.0.1", service.smtp_port, timeout=10) as client:
            try:
                client.sendmail("", [rcpt], b"Subject: hi\r\n\r\nline one\nline two\r\n")
            except smtplib.SMTPDataError as refused:
                return refused.smtp_code
        return 250

    assert await asyncio.to_thread(send) == 550


async def test_rejected_delivery_becomes_hard_smtp_bounce(service, js):
    # The sender's own session got "550 5.1.1 user unknown": a HARD bounce from source SMTP; a bad
    # payload before it goes to dead letters and the consumer carries on.
    await js.publish(bus.SUBJECT_DELIVERY_REPORT, b"\xff\xff not protobuf")
    report = events_pb2.DeliveryReport(
        events=[
            events_pb2.DeliveryEvent(
                organization_id=ORG, campaign_id=CAMPAIGN, subscriber_id=9, email="nobody@example.org",
                outcome=events_pb2.DELIVERY_OUTCOME_REJECTED, smtp_code=550,
                smtp_message="5.1.1 <nobody@example.org>: Recipient address rejected: User unknown",
                enhanced_status="5.1.1", attempt=1,
            ),
            events_pb2.DeliveryEvent(
                organization_id=ORG, campaign_id=CAMPAIGN, subscriber_id=10, email="slow@example.org",
                outcome=events_pb2.DELIVERY_OUTCOME_EXPIRED, smtp_code=451, attempt=7,
            ),
            events_pb2.DeliveryEvent(
                organization_id=ORG, campaign_id=CAMPAIGN, subscriber_id=11, email="ok@example.org",
                outcome=events_pb2.DELIVERY_OUTCOME_SENT, smtp_code=250, attempt=1,
            ),
        ]
    )  # fmt: skip
    await bus.publish(js, bus.SUBJECT_DELIVERY_REPORT, report)

    handled = 0
    deadline = time.monotonic() + 10
    while handled < 2 and time.monotonic() < deadline:
        handled += await service.consumer.run_once(timeout=0.5)
    assert handled == 2

    events = {e.subscriber_id: e for e in await bounce_events(js, want=2)}
    assert set(events) == {9, 10}
    assert events[9].kind == events_pb2.BOUNCE_KIND_HARD
    assert events[9].source == events_pb2.BOUNCE_SOURCE_SMTP
    assert events[9].smtp_code == 550
    assert events[10].kind == events_pb2.BOUNCE_KIND_SOFT
    dead = await js.stream_info(bus.STREAM_DEAD_LETTER)
    assert dead.state.messages == 1
