"""The watchdog against the running pipeline: services stopped and started, a stalled queue, a bounce wave."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import time
from email import policy

from services.sender import service as sender_service
from services.watchdog import service as watchdog_service
from services.watchdog.config import Config
from tests.support.clock import MovableClock
from tests.support.mtls import default_pki

OPERATORS = ("ops@example.com", "oncall@example.org")


def alert_mails(smtp_sink) -> list[tuple[str, str, str]]:
    """(alert header, subject, text) of every mail the operators got, in order."""
    found = []
    for caught in smtp_sink.messages:
        if sorted(caught.rcpt_tos) != sorted(OPERATORS):
            continue
        message = email.message_from_bytes(caught.data, policy=policy.default)
        found.append((message["X-Mailblast-Alert"], message["Subject"], message.get_content()))
    return found


async def new_mail(smtp_sink, seen: int, timeout: float = 10.0) -> list[tuple[str, str, str]]:
    """The operators' mails after the first `seen`, once there is one (polling with a deadline)."""
    deadline = time.monotonic() + timeout
    while len(alert_mails(smtp_sink)) <= seen:
        assert time.monotonic() < deadline, "no alert mail arrived"
        await asyncio.sleep(0.05)
    return alert_mails(smtp_sink)[seen:]


async def test_watchdog_mails_alerts_and_all_clears(stack, nats_server, smtp_sink, tls_files):
    # The watchdog asks the five services' health, watches the senders' backlog and the bounce rate, and
    # mails both operators through the SMTP server (here the catcher), by the clock the test moves.
    # Lists stops: nothing is mailed until it has failed for a minute, then one alert, once; lists starts
    # again: the all-clear. Half of a campaign's recipients are refused for good: the bounce rate alert;
    # the hour passes: its all-clear. The sender stops and a campaign waits: after five minutes the sender
    # alert and the stalled-queue alert; a sender starts, the campaign goes out: both all-clears.
    clock = MovableClock()
    config = Config(
        targets=tuple(
            (name, f"127.0.0.1:{running.grpc_port}")
            for name, running in (
                ("auth", stack.auth), ("lists", stack.lists), ("campaigns", stack.campaigns),
                ("sender", stack.senders[0]), ("bounce", stack.bounce),
            )
        ),
        operators=OPERATORS, smtp_host="127.0.0.1", smtp_port=smtp_sink.port, smtp_tls_ca_file=str(tls_files[0]),
        down_after_seconds=60, queue_wait_seconds=300, rate_window_seconds=3600, min_deliveries=10,
        bounce_rate=0.2, nats_url=nats_server.url, nats_creds_file=nats_server.creds("watchdog"),
        grpc_tls=default_pki().tls("watchdog"),
    )  # fmt: skip
    watchdog = await watchdog_service.start(config, clock=clock, watch=False)
    try:
        assert await watchdog.check() == []

        await stack.lists.stop()
        assert await watchdog.check() == []
        clock.advance(59)
        assert await watchdog.check() == []
        clock.advance(2)
        (alert,) = await watchdog.check()
        assert alert.key == "health:lists" and alert.firing
        [(header, subject, text)] = await new_mail(smtp_sink, 0)
        assert header == "health:lists firing"
        assert subject == "[mailblast] lists が応答しません / lists is not answering"
        assert "The health check of lists has failed for 60 s or more: UNAVAILABLE" in text
        clock.advance(600)
        assert await watchdog.check() == []  # one alert, not one per round
        await stack.restart_lists()
        (clear,) = await watchdog.check()
        assert clear.key == "health:lists" and not clear.firing
        [(header, subject, _)] = await new_mail(smtp_sink, 1)
        assert header == "health:lists resolved" and subject.endswith("lists is answering again")

        refused = {f"gone{i}@example.net" for i in range(5)}
        smtp_sink.reply = lambda address, seen: "550 5.1.1 no such user" if address in refused else None
        list_id = await stack.create_list([*refused, *(f"here{i}@example.com" for i in range(5))], name="wave")
        sent = await stack.send_campaign([list_id])
        await stack.wait_campaign(sent.id, lambda c: c.counters.sent == 5 and c.counters.bounced == 5)
        deadline = time.monotonic() + 30
        while not (notices := await watchdog.check()):
            # Bounce turns the refusals into bounce events a moment after the delivery reports.
            assert time.monotonic() < deadline, "no bounce-rate alert"
            await asyncio.sleep(0.1)
        assert [(n.key, n.firing) for n in notices] == [("rate:bounce", True)]
        [(header, subject, text)] = await new_mail(smtp_sink, 2)
        assert header == "rate:bounce firing" and "50.0% of 10 deliveries" in text
        clock.advance(3601)
        assert [(n.key, n.firing) for n in await watchdog.check()] == [("rate:bounce", False)]
        smtp_sink.reply = None

        stopped = stack.senders.pop(0)
        await stopped.stop()
        list_id = await stack.create_list([f"later{i}@example.com" for i in range(3)], name="later")
        waiting = await stack.send_campaign([list_id])
        assert await watchdog.check() == []
        clock.advance(301)
        notices = await watchdog.check()
        assert sorted((n.key, n.firing) for n in notices) == [("health:sender", True), ("queue", True)]
        deadline = time.monotonic() + 10
        while len(mails := alert_mails(smtp_sink)[4:]) < 2:
            assert time.monotonic() < deadline, mails
            await asyncio.sleep(0.05)
        queue = next(m for m in mails if m[0] == "queue firing")
        assert queue[1].endswith("the send queue is not moving") and "batches have waited 301 s" in queue[2]

        # A sender comes back where the old one was (as a restarted pod behind its Service).
        again = dataclasses.replace(stack.sender_config, grpc_bind=f"127.0.0.1:{stopped.grpc_port}")
        stack.senders.append(await sender_service.start(again))
        await stack.wait_campaign(waiting.id, lambda c: c.counters.sent == 3)
        notices = await watchdog.check()
        assert sorted((n.key, n.firing) for n in notices) == [("health:sender", False), ("queue", False)]
        while len(alert_mails(smtp_sink)) < 8:
            assert time.monotonic() < deadline + 60, alert_mails(smtp_sink)
            await asyncio.sleep(0.05)
        assert {m[0] for m in alert_mails(smtp_sink)[6:]} == {"health:sender resolved", "queue resolved"}
    finally:
        await watchdog.stop()
