"""NATS as deploy/k8s/components/nats runs it: three JetStream servers, every stream kept on all three."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from mailblast.v1 import events_pb2

from cli.nats_credentials import Setup
from dev.embedded import EmbeddedServer, free_port, nats_server_binary, open_private_log, wait_for_port
from services.common import bus
from services.common.runner import Ack, Decision, Delivery, Runner
from services.common.settings import ConfigError
from tests.support.nats import NatsServer

COMPONENT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "components" / "nats"


@pytest.fixture
def nats_cluster(tmp_path: Path, nats_trust: Setup) -> Iterator[list[EmbeddedServer]]:
    """components/nats's nats.conf and cluster.conf as three servers on loopback, trusting the test operator.

    Only what a pod has and this machine has not changes: its data and pid paths move into tmp_path, and the
    addresses (client, monitoring, routes) become loopback ports, given on the command line.
    """
    etc = tmp_path / "etc"
    (etc / "auth").mkdir(parents=True)
    shutil.copy(COMPONENT / "cluster.conf", etc / "cluster.conf")
    shutil.copy(nats_trust.server_config_file, etc / "auth" / "server.conf")
    template = (COMPONENT / "nats.conf").read_text()
    assert "/data/jetstream" in template and "/var/run/nats/nats.pid" in template
    route_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
    servers: list[EmbeddedServer] = []
    try:
        for index, route_port in enumerate(route_ports):
            data = tmp_path / f"nats-{index}"
            data.mkdir()
            conf = etc / f"nats-{index}.conf"
            conf.write_text(
                template.replace("/data/jetstream", str(data / "jetstream")).replace(
                    "/var/run/nats/nats.pid", str(data / "nats.pid")
                )
            )
            port = free_port()
            log = open_private_log(data / "nats.log")
            process = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port), "-m", str(free_port()),
                 "--cluster", f"nats://127.0.0.1:{route_port}", "--routes", routes],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "POD_NAME": f"nats-{index}"},
            )  # fmt: skip
            log.close()
            servers.append(EmbeddedServer(f"nats-{index}", f"nats://127.0.0.1:{port}", process, data / "nats.log"))
        for server in servers:
            wait_for_port("127.0.0.1", int(server.url.rsplit(":", 1)[1]), 30, server.process)
        yield servers
    finally:
        for server in servers:
            server.stop()


async def until(action, timeout: float = 30.0):
    """Run `action` until it stops failing for want of a JetStream leader (elections take a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await action()
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
                nats.js.errors.APIError):  # fmt: skip
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_every_stream_is_kept_on_three_servers_and_survives_losing_one(nats_cluster, nats_trust):
    # On the NATS cluster of three that Kubernetes runs, each service, connecting with NATS_STREAM_REPLICAS=3
    # and its own credential, creates its streams with a copy on every server. When the server leading the
    # send stream goes away, a campaign's batch is still accepted and the senders' consumer still gets it once.
    # The services are given one address, as the Service `nats` is one; they learn the others from it.
    credentials = NatsServer(nats_cluster[0].url, nats_trust)
    admin = await credentials.connect()
    js = admin.jetstream()
    await until(js.account_info)
    connections = {}
    try:
        for service in bus.SERVICE_ACCESS:
            connections[service], _ = await bus.connect(
                credentials.url, service, credentials.creds(service), stream_replicas=3
            )
        for config in bus.STREAMS:
            info = await until(lambda name=config.name: js.stream_info(name))
            assert info.config.num_replicas == 3, config.name
            peers = {info.cluster.leader, *(replica.name for replica in info.cluster.replicas)}
            assert peers == {"nats-0", "nats-1", "nats-2"}, config.name

        info = await js.stream_info(bus.STREAM_SEND)
        next(server for server in nats_cluster if server.name == info.cluster.leader).stop()
        taken: list[events_pb2.SendBatch] = []

        class Taker(Runner[events_pb2.SendBatch]):
            """The sender's durable, keeping what it is given."""

            payload_type = events_pb2.SendBatch

            async def dispose(self, batch: events_pb2.SendBatch, delivery: Delivery) -> Decision:
                """Keep the batch, done with it."""
                taken.append(batch)
                return Ack()

        senders = connections["sender"].jetstream()
        consumer = Taker(senders, stream=bus.STREAM_SEND, durable="sender-batches", subject=bus.SUBJECT_SEND_BATCH)
        await until(consumer.start)
        campaigns = connections["campaigns"].jetstream()
        batch = events_pb2.SendBatch(campaign_id=1, batch_number=1).SerializeToString()
        for _ in range(2):  # the same batch twice, as a fan-out resumed after a restart publishes it
            await until(lambda: campaigns.publish(bus.SUBJECT_SEND_BATCH, batch, headers={"Nats-Msg-Id": "send-1-1"}))
        deadline = time.monotonic() + 30
        while not taken and time.monotonic() < deadline:
            await until(consumer.run_once)
        assert [(b.campaign_id, b.batch_number) for b in taken] == [(1, 1)]
        assert await consumer.run_once(timeout=0.5) == 0
        await consumer.stop()
    finally:
        for nc in connections.values():
            await nc.close()
        await admin.close()


@pytest.mark.parametrize("replicas", [0, 6])
async def test_an_impossible_replica_count_stops_start_up_naming_the_setting(replicas: int):
    # JetStream keeps one to five copies of a stream: any other NATS_STREAM_REPLICAS stops the service
    # before it connects, saying which setting is wrong.
    with pytest.raises(ConfigError, match=f"NATS_STREAM_REPLICAS={replicas} must be between 1 and 5"):
        await bus.connect("nats://127.0.0.1:1", "sender", "", stream_replicas=replicas)
