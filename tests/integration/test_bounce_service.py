"""The bounce service with real PostgreSQL, NATS, SMTP over sockets and gRPC on port 0."""

from __future__ import annotations

import asyncio
import smtplib
import time
import tracemalloc

import aiosmtplib
import nats.errors
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
from tests.support.nats import NatsServer

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
async def make_service(database_url: str, nats_server: NatsServer, internal_key: bytes):
    """Start bounce services with these settings, consumers stepped by the test (run_once); stopped after it."""
    started = []

    async def make(**overrides):
        config = Config(
            database_url=database_url,
            nats_url=nats_server.url,
            nats_creds_file=nats_server.creds("bounce"),
            internal_key=internal_key,
            grpc_tls=default_pki().tls("bounce"),
            grpc_bind="127.0.0.1:0",
            smtp_bind=f"127.0.0.1:{free_port()}",
            **overrides,
        )
        running = await start(config, run_consumers=False)
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in started:
            await running.stop()


@pytest_asyncio.fixture
async def service(make_service):
    """A running bounce service with the default settings."""
    return await make_service()


@pytest_asyncio.fixture
async def js(nats_server: NatsServer):
    """A JetStream client for the test's own publishing and reading (allowed everything)."""
    nc = await nats_server.connect()
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
        (SUBSCRIBER, "gone@example.org", events_pb2.BOUNCE_KIND_HARD, events_pb2.BOUNCE_SOURCE_DSN)
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


async def test_damaged_dsn_and_addressless_notice_are_still_recorded(service, js, internal_key):
    # A DSN whose MIME boundary was lost on the way still gives its recipient and status; a plain notice
    # that names no address at all is still a bounce of the subscriber its VERP address names.
    damaged_ref = RecipientRef(ORG, CAMPAIGN, 5)
    damaged = dsn(internal_key, damaged_ref, "lost@example.org", "5.1.1", "550 5.1.1 User unknown")
    damaged = damaged.replace(b"--b1", b"--cut-by-a-relay")
    await send_returned_mail(service.smtp_port, return_path(internal_key, damaged_ref, "b.example.com"), damaged)
    vague_ref = RecipientRef(ORG, CAMPAIGN, 6)
    vague = (
        b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undeliverable\r\nMessage-ID: <v1@mx.example.net>\r\n"
        b"\r\nYour message could not be delivered: permanent failure.\r\n"
    )
    await send_returned_mail(service.smtp_port, return_path(internal_key, vague_ref, "b.example.com"), vague)
    events = sorted(await bounce_events(js, want=2), key=lambda e: e.subscriber_id)
    assert [(e.subscriber_id, e.email, e.kind, e.status) for e in events] == [
        (5, "lost@example.org", events_pb2.BOUNCE_KIND_HARD, "5.1.1"),
        (6, "", events_pb2.BOUNCE_KIND_SOFT, ""),
    ]


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


# ------------------------------------------------------------------------------- listener limits


class RawSmtp:
    """A client on a plain socket, so a test can stop halfway, trickle, or flood like an abuser."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source_ip: str = "127.0.0.1") -> tuple[RawSmtp, bytes]:
        """Connect from this loopback address; the first line the listener says."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source_ip, 0))
        client = cls(reader, writer)
        return client, await client.line()

    async def line(self, timeout: float = 10.0) -> bytes:
        """The next line the listener says (empty once it has closed the connection)."""
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def command(self, text: str) -> bytes:
        """Send a command; the last line of its reply."""
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()
        while (reply := await self.line())[3:4] == b"-":
            pass
        return reply

    async def start_data(self, rcpt: str) -> None:
        """Say hello and open a DATA phase for one recipient."""
        assert (await self.command("EHLO mx.example.net")).startswith(b"250")
        assert (await self.command("MAIL FROM:<>")).startswith(b"250")
        assert (await self.command(f"RCPT TO:<{rcpt}>")).startswith(b"250")
        assert (await self.command("DATA")).startswith(b"354")

    def close(self) -> None:
        """Hang up."""
        self.writer.close()


LINE = b"x" * 998 + b"\r\n"
CHUNK = LINE * 64


def rss_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/status") as status:
        kilobytes = next(line for line in status if line.startswith("VmRSS")).split()[1]
    return int(kilobytes) * 1024


async def test_connections_over_the_total_and_per_address_limits_are_told_421_and_closed(make_service):
    # At most 2 sessions from one address and 4 in all: a third from 127.0.0.1 is told 421 (from your
    # address) and closed, 127.0.0.2 still gets in, a fifth session from a third address is told 421 (too
    # many connections). When a session ends its place is free again.
    service = await make_service(max_connections=4, max_connections_per_ip=2)
    port = service.smtp_port
    first, _ = await RawSmtp.connect(port)
    second, banner = await RawSmtp.connect(port)
    assert banner.startswith(b"220")
    third, refusal = await RawSmtp.connect(port)
    assert refusal == b"421 4.7.0 too many connections from your address, try again later\r\n"
    assert await third.line() == b""
    others = [await RawSmtp.connect(port, "127.0.0.2") for _ in range(2)]
    assert all(banner.startswith(b"220") for _, banner in others)
    fifth, refusal = await RawSmtp.connect(port, "127.0.0.3")
    assert refusal == b"421 4.7.0 too many connections, try again later\r\n"
    assert await fifth.line() == b""

    assert (await first.command("QUIT")).startswith(b"221")
    deadline = time.monotonic() + 10
    while True:
        again, banner = await RawSmtp.connect(port, "127.0.0.3")
        if banner.startswith(b"220") or time.monotonic() > deadline:
            break
        again.close()
        await asyncio.sleep(0.05)
    assert banner.startswith(b"220")
    for client in (first, second, third, fifth, again, *(c for c, _ in others)):
        client.close()


async def test_idle_client_is_told_421_and_disconnected_after_the_idle_timeout(make_service):
    # With a half-second idle limit, a client that keeps sending NOOP for longer stays connected; one
    # that then stays silent is told 421 (timeout) and disconnected, not before the limit.
    service = await make_service(idle_timeout_seconds=0.5)
    client, _ = await RawSmtp.connect(service.smtp_port)
    for _ in range(5):
        await asyncio.sleep(0.2)
        assert (await client.command("NOOP")).startswith(b"250")
    silent_since = time.monotonic()
    assert await client.line() == b"421 4.4.2 timeout, closing connection\r\n"
    assert await client.line() == b""
    assert time.monotonic() - silent_since >= 0.5
    client.close()


async def test_data_trickling_past_the_data_time_limit_is_cut_off(make_service, internal_key, signer):
    # DATA may take one second in all: a client sending a line every tenth of a second (always
    # within the idle limit) is told 421 and cut off once the second is up; nothing is recorded.
    service = await make_service(idle_timeout_seconds=5.0, data_timeout_seconds=1.0)
    client, _ = await RawSmtp.connect(service.smtp_port)
    await client.start_data(return_path(internal_key, RecipientRef(ORG, CAMPAIGN, SUBSCRIBER), "b.example"))
    started = time.monotonic()

    async def trickle() -> None:
        while True:
            client.writer.write(b"Subject: slow\r\n")
            await client.writer.drain()
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    try:
        assert await client.line() == b"421 4.4.2 timeout, closing connection\r\n"
        assert await client.line() == b""
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert 1.0 <= time.monotonic() - started < 10
    assert not (await list_bounces(service.grpc_port, signer, ORG, CAMPAIGN)).bounces
    client.close()


async def test_oversized_data_is_refused_with_552_at_the_limit_without_holding_it(make_service, internal_key):
    # The limit is 1 MB; a client pours 40 MB of DATA without stopping. The listener answers 552 as soon
    # as the limit is passed and closes, long before the 40 MB are sent, and the process's Python memory
    # grows by about the limit, not by the message.
    service = await make_service(max_message_bytes=1024 * 1024)
    client, _ = await RawSmtp.connect(service.smtp_port)
    await client.start_data(return_path(internal_key, RecipientRef(ORG, CAMPAIGN, SUBSCRIBER), "b.example"))
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while sent < 40 * 1024 * 1024:
            client.writer.write(CHUNK)
            await client.writer.drain()
            sent += len(CHUNK)

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pouring = asyncio.create_task(flood())
        reply = await client.line(timeout=30)
        sent_before_the_reply = sent
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    pouring.cancel()
    await asyncio.gather(pouring, return_exceptions=True)
    assert reply == b"552 5.3.4 message exceeds the size limit of 1048576 bytes\r\n"
    assert await client.line() == b""
    assert sent_before_the_reply < 20 * 1024 * 1024, sent_before_the_reply
    assert peak - before < 8 * 1024 * 1024, peak - before
    client.close()


async def test_memory_is_given_back_after_unfinished_data_sessions_close(make_service, internal_key):
    # Twenty clients each send 3.5 MB of DATA (under the 4 MB limit) and never finish: the process holds
    # them while they are open. Once they hang up, its resident memory falls back near where it was
    # (the buffers are freed, not left to fragment the heap).
    service = await make_service(max_message_bytes=4 * 1024 * 1024, max_connections=30, max_connections_per_ip=30)
    rcpt = return_path(internal_key, RecipientRef(ORG, CAMPAIGN, SUBSCRIBER), "b.example")
    baseline = rss_bytes()
    clients = []
    for _ in range(20):
        client, _ = await RawSmtp.connect(service.smtp_port)
        await client.start_data(rcpt)
        for _ in range(3_500_000 // len(CHUNK)):
            client.writer.write(CHUNK)
            await client.writer.drain()
        clients.append(client)

    async def settled(check) -> int:
        deadline = time.monotonic() + 20
        while True:
            rss = rss_bytes()
            if check(rss) or time.monotonic() > deadline:
                return rss
            await asyncio.sleep(0.1)

    held = await settled(lambda rss: rss - baseline > 50 * 1024 * 1024)
    assert held - baseline > 50 * 1024 * 1024, (held - baseline) // 2**20
    for client in clients:
        client.close()
    after = await settled(lambda rss: rss - baseline < 20 * 1024 * 1024)
    assert after - baseline < 20 * 1024 * 1024, (
        f"{(held - baseline) // 2**20} MB held, {(after - baseline) // 2**20} MB kept"
    )
