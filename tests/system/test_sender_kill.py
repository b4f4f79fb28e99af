"""A sender killed in the middle of a campaign: the other sender finishes it, nothing is lost."""

from __future__ import annotations

import asyncio
import email
import os
import signal
import subprocess
import sys
import time
from email import policy

from mailblast.v1 import campaigns_pb2

from tests.support.mtls import default_pki
from tests.support.stack import start_stack

CONCURRENCY = 16


def sender_env(config, key_file) -> dict[str, str]:
    """The environment of a sender process equivalent to the in-process test senders."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=config.database_url,
        NATS_URL=config.nats_url,
        NATS_CREDS_FILE=config.nats_creds_file,
        MAILBLAST_INTERNAL_KEY_FILE=str(key_file),
        SENDER_GRPC_BIND="127.0.0.1:0",
        SENDER_RELAY_HOST=config.relay_host,
        SENDER_RELAY_PORT=str(config.relay_port),
        SENDER_TLS="required",
        SENDER_TLS_CA_FILE=config.tls_ca_file,
        SENDER_RETURN_PATH_DOMAIN=config.return_path_domain,
        SENDER_UNSUBSCRIBE_URL=config.unsubscribe_url,
        SENDER_CONCURRENCY=str(CONCURRENCY),
        SENDER_ACK_WAIT_SECONDS="3",
        SENDER_CLAIM_SECONDS="5",
        SENDER_RETRY_BASE_SECONDS="0.2",
        SENDER_RETRY_MAX_SECONDS="1",
        OTEL_TRACES_EXPORTER="none",
        **default_pki().env("sender"),
    )
    return env


async def test_sigkill_mid_campaign_loses_nothing(
    database_url, nats_server, internal_key, smtp_sink, tls_files, dkim_keys, tmp_path
):
    # Two sender processes share a 5,000-recipient campaign; one is SIGKILLed after 1,000 deliveries.
    # Every recipient still receives the message. A second copy is possible only for messages in
    # flight at the kill (at most the killed sender's delivery concurrency plus its one uncommitted
    # ledger group), and a second copy carries the same Message-ID as the first.
    stack = await start_stack(
        database_url, nats_server, internal_key, smtp_sink.port, tls_files[0], dkim_keys, senders=0
    )
    key_file = tmp_path / "internal.key"
    key_file.write_bytes(internal_key)
    env = sender_env(stack.sender_config, key_file)
    logs = [open(tmp_path / f"sender{i}.log", "wb") for i in range(2)]
    senders = [
        subprocess.Popen([sys.executable, "-m", "services.sender"], env=env, stdout=log, stderr=subprocess.STDOUT)
        for log in logs
    ]
    try:
        emails = [f"k{i:05d}@example.net" for i in range(5000)]
        list_id = await stack.create_list(emails)
        campaign = await stack.send_campaign([list_id])
        await smtp_sink.wait_for(1000, timeout=240)
        senders[0].send_signal(signal.SIGKILL)
        senders[0].wait(10)
        deadline = time.monotonic() + 300
        while len(smtp_sink.received_by()) < 5000:
            assert time.monotonic() < deadline, f"only {len(smtp_sink.received_by())} of 5000 recipients reached"
            assert senders[1].poll() is None, "the surviving sender died"
            await asyncio.sleep(0.2)
        done = await stack.wait_campaign(campaign.id, lambda c: c.state == campaigns_pb2.CAMPAIGN_STATE_SENT, 120)
        assert done.counters.sent == 5000

        received = smtp_sink.received_by()
        assert sorted(received) == emails
        duplicates = {address: copies for address, copies in received.items() if len(copies) > 1}
        assert sum(len(c) - 1 for c in duplicates.values()) <= 2 * CONCURRENCY, len(duplicates)
        for copies in duplicates.values():
            ids = {email.message_from_bytes(c.data, policy=policy.default)["Message-ID"] for c in copies}
            assert len(ids) == 1
    finally:
        for proc in senders:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        for log in logs:
            log.close()
        await stack.stop()
