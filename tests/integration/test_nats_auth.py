"""NATS authentication and permissions on a real nats-server: who may connect, publish and subscribe what."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from pathlib import Path

import nats
import nats.errors
import pytest
import pytest_asyncio
from mailblast.v1 import campaigns_pb2, events_pb2
from nats.aio.client import Client

from cli import main as cli
from cli import nats_credentials
from services.common import bus
from services.common.erasure import Erasure, ErasureConsumer
from services.common.privacy import email_hash
from services.common.settings import ConfigError
from services.sender import service as sender_service
from services.sender.consumers import CampaignStateCopier, SuppressionCopier
from tests.support.nats import NatsServer, connect_with
from tests.support.stack import sender_config


class Refusals:
    """The errors the server sent a client (permission violations arrive asynchronously)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        """The client's error callback."""
        self.errors.append(str(exc).lower())

    async def wait_for(self, text: str, timeout: float = 10.0) -> None:
        """Wait for an error mentioning text (e.g. a subject), or fail with what arrived."""
        deadline = time.monotonic() + timeout
        while not any(text.lower() in error for error in self.errors):
            if time.monotonic() > deadline:
                raise AssertionError(f"no refusal mentioning {text!r}; got {self.errors}")
            await asyncio.sleep(0.02)


async def application(nats_server: NatsServer, tmp_path: Path, organization_id: int, name: str = "shop-app"):
    """A client connected with a freshly issued application credential of that organisation."""
    creds, _ = nats_server.issuer.application(organization_id, name)
    path = tmp_path / f"{name}-{organization_id}.creds"
    nats_credentials.write_secret(path, creds)
    refusals = Refusals()
    nc = await connect_with(nats_server.url, str(path), error_cb=refusals.record, allow_reconnect=False)
    return nc, refusals


@pytest_asyncio.fixture
async def admin(nats_server: NatsServer):
    """A JetStream context allowed everything, with the mailblast streams made (to look at them)."""
    nc = await nats_server.connect()
    js = nc.jetstream()
    await bus.ensure_streams(js)
    try:
        yield js
    finally:
        await nc.close()


async def stored(js, stream: str) -> int:
    """How many messages a stream holds."""
    return (await js.stream_info(stream)).state.messages


HASH = "a" * 64
# The streams the senders keep their copies of.
COPIED = (bus.STREAM_SUPPRESSION, bus.STREAM_CAMPAIGN_STATE)


def lifted(organization_id: int) -> events_pb2.SuppressionChanged:
    """A change taking the address of HASH off an organisation's suppression list."""
    return events_pb2.SuppressionChanged(organization_id=organization_id, email_hash=HASH, version=1)


def resumed(organization_id: int, campaign_id: int) -> events_pb2.CampaignStateChanged:
    """A change saying a campaign is sending (again)."""
    return events_pb2.CampaignStateChanged(
        organization_id=organization_id, campaign_id=campaign_id, state=campaigns_pb2.CAMPAIGN_STATE_SENDING, version=1
    )


FORGED_COMPLAINT = events_pb2.BounceEvent(bounce_id="forged", organization_id=1, kind=events_pb2.BOUNCE_KIND_COMPLAINT)
ERASURE_DURABLES = {"bounce": "bounce-erasures", "campaigns": "campaigns-erasures", "sender": "sender-erasures"}


def erased(organization_id: int, subscriber_id: int) -> events_pb2.SubscriberErased:
    """A SubscriberErased of that subscriber, as lists announces it (a keyed hash, never the address)."""
    return events_pb2.SubscriberErased(
        erasure_id=f"erasure-{subscriber_id}",
        organization_id=organization_id,
        subscriber_id=subscriber_id,
        email_hash=email_hash(b"k" * 32, f"subscriber-{subscriber_id}@example.net"),
    )


def transactional(organization_id: int, key: str, to: str = "taro@example.net") -> events_pb2.TransactionalMessage:
    """A password-reset-like message of an organisation."""
    return events_pb2.TransactionalMessage(
        organization_id=organization_id,
        message_key=key,
        to_address=to,
        to_name="山田 太郎",
        content=events_pb2.MessageContent(
            from_name="Shop",
            from_address="noreply@news.example.com",
            subject="ご注文ありがとうございます",
            text_body="{{ name }}様、ご注文を承りました。",
        ),
        category="shop.order",
    )


async def test_a_client_without_valid_credentials_is_refused(nats_server, tmp_path):
    # Anyone who reaches the port and connects without credentials, or with a credential signed by
    # another operator's keys, is refused before it can publish anything.
    stranger = nats_credentials.Authority.generate().issuer
    path = tmp_path / "stranger.creds"
    nats_credentials.write_secret(path, stranger.issue("intruder", [">"], subscribe=[">"])[0])
    for credentials in ({}, {"user_credentials": str(path)}):
        client = Client()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await client.connect(nats_server.url, allow_reconnect=False, **credentials)
        await client.close()  # the refused connection's socket


async def test_a_service_without_its_credential_stops_start_up_naming_the_setting(nats_server, tmp_path):
    # A service started without NATS_CREDS_FILE, or with a file that is no credential, does not wait
    # for ever: start-up stops with an error naming the setting.
    with pytest.raises(ConfigError, match="NATS_CREDS_FILE"):
        await bus.connect(nats_server.url, "lists")
    broken = tmp_path / "lists.creds"
    broken.write_text("-----BEGIN NATS USER JWT-----\nnot a token\n")
    with pytest.raises(ConfigError, match=f"NATS_CREDS_FILE {broken} is not a NATS user credentials file"):
        await bus.connect(nats_server.url, "lists", str(broken))


async def test_application_of_one_organisation_publishes_only_its_own_transactional_subject(
    nats_server, admin, tmp_path
):
    # An application credential of organisation 1 sends its own transactional mail, but NATS refuses it
    # organisation 2's subject, every event subject (a forged erasure included) and the send-batch
    # subject: nothing it forges is stored.
    nc, refusals = await application(nats_server, tmp_path, 1)
    try:
        ack = await nc.jetstream().publish(
            bus.transactional_subject(1), transactional(1, "shop.1").SerializeToString(), timeout=10
        )
        assert ack.stream == bus.STREAM_SEND
        forged = events_pb2.BounceEvent(bounce_id="forged", organization_id=1, kind=events_pb2.BOUNCE_KIND_COMPLAINT)
        attempts = {
            bus.transactional_subject(2): transactional(2, "shop.2"),
            # The platform's own subject, where account mail may reach a suppressed address.
            bus.transactional_subject(1, platform=True): transactional(1, "shop.platform"),
            bus.SUBJECT_BOUNCE_RECORDED: forged,
            bus.SUBJECT_DELIVERY_REPORT: events_pb2.DeliveryReport(),
            bus.SUBJECT_SEND_BATCH: events_pb2.SendBatch(organization_id=1, campaign_id=1),
            bus.SUBJECT_SUBSCRIBER_ERASED: erased(1, 7),
            # A forged suppression change could let mail reach an address that unsubscribed, or stop mail.
            bus.suppression_subject(1, HASH): lifted(1),
            bus.campaign_state_subject(1, 5): resumed(1, 5),
            f"{bus.SUBJECT_DEAD_LETTER}.{bus.SUBJECT_SEND_BATCH}": forged,
            f"$JS.API.STREAM.DELETE.{bus.STREAM_SEND}": forged,
        }
        for subject, message in attempts.items():
            await nc.publish(subject, message.SerializeToString())
            await refusals.wait_for(f'permissions violation for publish to "{subject}"')
    finally:
        await nc.close()
    last = await admin.get_last_msg(bus.STREAM_SEND, bus.SUBJECT_SEND_TRANSACTIONAL)
    assert (await stored(admin, bus.STREAM_SEND), last.subject) == (1, bus.transactional_subject(1))
    for stream in (bus.STREAM_BOUNCE, bus.STREAM_DELIVERY, bus.STREAM_PRIVACY, bus.STREAM_DEAD_LETTER, *COPIED):
        assert await stored(admin, stream) == 0, stream


async def test_application_subscribes_to_nothing_but_its_own_inbox(nats_server, tmp_path):
    # An application may receive only on its own inbox (its JetStream publish acknowledgements): NATS
    # refuses every other subscription, including everything and another application's inbox, and no
    # message published there reaches it.
    nc, refusals = await application(nats_server, tmp_path, 1)
    publisher = await nats_server.connect()
    try:
        received: list[str] = []

        async def keep(msg) -> None:
            received.append(msg.subject)

        other_inbox = f"{bus.inbox_prefix(bus.credential_user_key(nats_server.creds('lists')))}.x"
        denied = [">", "mailblast.>", bus.SUBJECT_BOUNCE_RECORDED, "_INBOX.>", other_inbox, "$JS.API.>"]
        for subject in denied:
            await nc.subscribe(subject, cb=keep)
            await refusals.wait_for(f'permissions violation for subscription to "{subject}"')
        own_inbox = nc.new_inbox()
        marker = asyncio.Event()

        async def arrived(msg) -> None:
            marker.set()

        await nc.subscribe(own_inbox, cb=arrived)
        await nc.flush()
        for subject in (bus.SUBJECT_BOUNCE_RECORDED, other_inbox, "mailblast.anything"):
            await publisher.publish(subject, b"not for the application")
        # The server forwards one publisher's messages in order: had any denied subscription been
        # taken, its message would have arrived before this one on the application's own inbox.
        await publisher.publish(own_inbox, b"marker")
        await asyncio.wait_for(marker.wait(), 10)
        assert received == []
    finally:
        await publisher.close()
        await nc.close()


@pytest.mark.parametrize(
    ("service", "subject"),
    [
        ("lists", bus.SUBJECT_BOUNCE_RECORDED),  # a forged complaint would suppress a subscriber
        ("auth", bus.SUBJECT_SEND_BATCH),
        ("campaigns", bus.SUBJECT_DELIVERY_REPORT),
        ("sender", bus.SUBJECT_BOUNCE_RECORDED),
        ("bounce", bus.transactional_subject(1)),
        ("campaigns", f"$JS.API.CONSUMER.MSG.NEXT.{bus.STREAM_SEND}.sender-transactional"),
        ("lists", f"$JS.API.STREAM.UPDATE.{bus.STREAM_BOUNCE}"),
        ("sender", f"$JS.API.STREAM.DELETE.{bus.STREAM_SEND}"),
        # Only lists announces erasures: a forged one would make every service rewrite a subscriber's rows.
        ("auth", bus.SUBJECT_SUBSCRIBER_ERASED),
        ("campaigns", bus.SUBJECT_SUBSCRIBER_ERASED),
        ("sender", bus.SUBJECT_SUBSCRIBER_ERASED),
        ("bounce", bus.SUBJECT_SUBSCRIBER_ERASED),
        ("bounce", f"$JS.API.CONSUMER.MSG.NEXT.{bus.STREAM_PRIVACY}.sender-erasures"),
        ("campaigns", f"$JS.API.STREAM.UPDATE.{bus.STREAM_PRIVACY}"),
        # Only lists announces suppressions and only campaigns campaign states: the senders act on them.
        ("sender", bus.suppression_subject(1, HASH)),
        ("campaigns", bus.suppression_subject(1, HASH)),
        ("bounce", bus.suppression_subject(1, HASH)),
        ("auth", bus.suppression_subject(1, HASH)),
        ("lists", bus.campaign_state_subject(1, 5)),
        ("sender", bus.campaign_state_subject(1, 5)),
        ("bounce", bus.campaign_state_subject(1, 5)),
        ("campaigns", f"$JS.API.CONSUMER.MSG.NEXT.{bus.STREAM_SUPPRESSION}.sender-suppressions"),
        ("lists", f"$JS.API.CONSUMER.MSG.NEXT.{bus.STREAM_CAMPAIGN_STATE}.sender-campaign-states"),
        ("lists", f"$JS.API.STREAM.UPDATE.{bus.STREAM_CAMPAIGN_STATE}"),
        ("campaigns", f"$JS.API.STREAM.UPDATE.{bus.STREAM_SUPPRESSION}"),
        ("sender", f"$JS.API.STREAM.PURGE.{bus.STREAM_SUPPRESSION}"),
        ("lists", f"$JS.API.STREAM.PURGE.{bus.STREAM_SUPPRESSION}"),
    ],
)
async def test_a_service_cannot_publish_a_subject_it_does_not_own(nats_server, admin, service, subject):
    # Each service's credential publishes only the subjects it uses (DEVELOPERS.md's NATS table): lists
    # cannot forge a BounceEvent, only lists announces an erasure, campaigns cannot take the sender's
    # transactional work nor bounce its erasures, no service may delete a stream, and only a stream's
    # maintainer may change it. What is refused is not stored.
    refusals = Refusals()
    nc = await nats_server.connect(service, error_cb=refusals.record, allow_reconnect=False)
    try:
        event = erased(1, 7) if subject == bus.SUBJECT_SUBSCRIBER_ERASED else FORGED_COMPLAINT
        event = lifted(1) if subject.startswith("mailblast.suppression.") else event
        await nc.publish(subject, event.SerializeToString())
        await refusals.wait_for(f'permissions violation for publish to "{subject}"')
    finally:
        await nc.close()
    for stream in (bus.STREAM_SEND, bus.STREAM_DELIVERY, bus.STREAM_BOUNCE, bus.STREAM_PRIVACY, *COPIED):
        assert await stored(admin, stream) == 0, stream


async def test_lists_announces_erasures_and_each_holder_reads_them_with_its_own_credential(nats_server, tmp_path):
    # Lists publishes an erasure and one it cannot apply; campaigns, the sender and bounce, each with
    # its own credential and durable, receive the erasure and move the other to the dead letters.
    # Bounce connects first and creates the erasure stream, which lists (its maintainer) then finds.
    clients = []
    try:
        holders = {}
        for service, durable in ERASURE_DURABLES.items():
            nc, js = await bus.connect(nats_server.url, service, nats_server.creds(service))
            clients.append(nc)
            holders[service] = (js, durable)
        nc, lists_js = await bus.connect(nats_server.url, "lists", nats_server.creds("lists"))
        clients.append(nc)
        await bus.publish(lists_js, bus.SUBJECT_SUBSCRIBER_ERASED, erased(1, 7), msg_id="erasure-7")
        # Without its keyed hash: no holder could find the rows an erasure must rewrite.
        await bus.publish(lists_js, bus.SUBJECT_SUBSCRIBER_ERASED, events_pb2.SubscriberErased(organization_id=1))
        for service, (js, durable) in holders.items():
            received: list[Erasure] = []

            async def keep(erasure: Erasure, received=received) -> None:
                received.append(erasure)

            consumer = ErasureConsumer(js, durable, keep)
            await consumer.start()
            deadline = time.monotonic() + 10
            handled = 0
            while handled < 2:
                assert time.monotonic() < deadline, (service, handled)
                handled += await consumer.run_once(timeout=1.0)
            await consumer.stop()
            assert [(e.organization_id, e.subscriber_id, e.erasure_id) for e in received] == [(1, 7, "erasure-7")]
            # Acknowledged (and the bad one terminated) with its own credential: nothing left to redeliver.
            # The server applies acks after they arrive, so it is asked until a deadline.
            while True:
                info = await js.consumer_info(bus.STREAM_PRIVACY, durable)
                if (info.num_pending, info.num_ack_pending) == (0, 0):
                    break
                assert time.monotonic() < deadline, (service, info.num_pending, info.num_ack_pending)
                await asyncio.sleep(0.05)
        dead = await nats_server.connect()
        clients.append(dead)
        kept = await dead.jetstream().stream_info(bus.STREAM_DEAD_LETTER)
        assert kept.state.messages == len(ERASURE_DURABLES)
    finally:
        for nc in clients:
            await nc.close()


class Kept:
    """A change store that keeps what the copier hands it (the sender's real one is a table)."""

    def __init__(self) -> None:
        self.suppressions: list = []
        self.states: list = []

    async def apply_suppressions(self, changes):
        """Keep the suppression changes."""
        self.suppressions.extend(changes)
        return [None] * len(changes)

    async def apply_campaign_states(self, changes):
        """Keep the campaign state changes."""
        self.states.extend(changes)
        return [None] * len(changes)


async def test_lists_and_campaigns_announce_and_the_sender_copies_with_its_own_credential(nats_server):
    # Lists announces a suppression and campaigns a campaign's state, each with its own credential (and
    # one change each that names nothing); the sender reads both with its own credential and durables,
    # copying the good ones and moving the bad ones to the dead letters. The sender connects first and
    # creates the streams, which lists and campaigns (their maintainers) then find.
    clients = []
    try:
        nc, sender_js = await bus.connect(nats_server.url, "sender", nats_server.creds("sender"))
        clients.append(nc)
        # The streams keep one change per subject: the bad ones go to subjects of their own.
        for service, good, bad in (
            (
                "lists",
                (bus.suppression_subject(1, HASH), lifted(1)),
                (bus.suppression_subject(1, "b" * 64), events_pb2.SuppressionChanged(organization_id=1)),
            ),
            (
                "campaigns",
                (bus.campaign_state_subject(1, 5), resumed(1, 5)),
                (bus.campaign_state_subject(1, 6), events_pb2.CampaignStateChanged()),
            ),
        ):
            nc, js = await bus.connect(nats_server.url, service, nats_server.creds(service))
            clients.append(nc)
            for subject, event in (bad, good):
                await bus.publish(js, subject, event)
        kept = Kept()
        for copier, stream in (
            (SuppressionCopier(sender_js, kept), bus.STREAM_SUPPRESSION),
            (CampaignStateCopier(sender_js, kept), bus.STREAM_CAMPAIGN_STATE),
        ):
            await copier.start()
            deadline = time.monotonic() + 10
            handled = 0
            while handled < 2:
                assert time.monotonic() < deadline, (copier.durable, handled)
                handled += await copier.run_once(timeout=1.0)
            await copier.stop()
            while True:
                info = await sender_js.consumer_info(stream, copier.durable)
                if (info.num_pending, info.num_ack_pending) == (0, 0):
                    break
                assert time.monotonic() < deadline, (copier.durable, info.num_pending, info.num_ack_pending)
                await asyncio.sleep(0.05)
        assert [(c.organization_id, c.email_hash, c.reason) for c in kept.suppressions] == [(1, HASH, None)]
        assert [(c.campaign_id, c.state) for c in kept.states] == [(5, "sending")]
        admin = await nats_server.connect()
        clients.append(admin)
        assert (await admin.jetstream().stream_info(bus.STREAM_DEAD_LETTER)).state.messages == 2
    finally:
        for nc in clients:
            await nc.close()


@pytest_asyncio.fixture
async def sender(database_url, nats_server, internal_key, smtp_sink, tls_files, dkim_keys, tmp_path):
    """A sender relaying to the SMTP sink, with its own credential."""
    config = sender_config(database_url, nats_server, internal_key, smtp_sink.port, tls_files[0], dkim_keys)
    running = await sender_service.start(config)
    try:
        yield running
    finally:
        await running.stop(grace=5.0)


async def test_transactional_message_naming_another_organisation_than_its_subject_is_not_delivered(
    sender, nats_server, admin, smtp_sink, tmp_path
):
    # An application of organisation 1 publishes, on its own subject, a message claiming organisation 2:
    # the sender never delivers it (it goes to dead letters with the reason), and still delivers the
    # application's honest message published after it.
    nc, _ = await application(nats_server, tmp_path, 1)
    try:
        js = nc.jetstream()
        await bus.publish(js, bus.transactional_subject(1), transactional(2, "forged.1", to="victim@example.net"))
        await bus.publish(js, bus.transactional_subject(1), transactional(1, "honest.1", to="buyer@example.net"))
    finally:
        await nc.close()
    [caught] = await smtp_sink.wait_for(1)
    assert caught.rcpt_tos == ["buyer@example.net"]
    dead = await admin.get_last_msg(bus.STREAM_DEAD_LETTER, f"{bus.SUBJECT_DEAD_LETTER}.>")
    assert dead.headers["Mailblast-Original-Subject"] == bus.transactional_subject(1)
    assert "organisation 2" in dead.headers["Mailblast-Dead-Reason"]
    assert "victim@example.net" not in smtp_sink.received_by()


async def test_issued_application_credential_sends_transactional_mail_end_to_end(
    sender, nats_server, smtp_sink, tmp_path, capsys
):
    # An administrator issues a credential with `mailblast nats issue-credential` for organisation 1; the
    # application connects with it as the command says and publishes an order confirmation, which the
    # sender delivers signed to the recipient.
    out = tmp_path / "shop-app.creds"
    code = cli.run(
        ["nats", "issue-credential", "--organization", "1", "--name", "shop-app",
         "--signing-key", str(nats_server.signing_key_file), "--out", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert "mailblast.send.transactional.1 only" in printed
    seed = next(line for line in out.read_text().splitlines() if line.startswith("SU"))
    assert seed not in printed
    prefix = printed.rsplit("inbox_prefix=", 1)[1].split()[0]
    nc = await nats.connect(nats_server.url, user_credentials=str(out), inbox_prefix=prefix, allow_reconnect=False)
    try:
        order = transactional(1, "shop.order.1001", to="buyer@example.net")
        await bus.publish(nc.jetstream(), bus.transactional_subject(1), order, msg_id=order.message_key)
    finally:
        await nc.close()
    [caught] = await smtp_sink.wait_for(1)
    assert caught.rcpt_tos == ["buyer@example.net"] and caught.tls
    message = email.message_from_bytes(caught.data, policy=email.policy.default)
    assert message["Subject"] == "ご注文ありがとうございます"
    assert "DKIM-Signature" in message
    assert "山田 太郎様、ご注文を承りました。" in message.get_body(("plain",)).get_content()
    assert message["To"].addresses[0].addr_spec == "buyer@example.net"
