"""Every service's /metrics, scraped over HTTP from the running services while they import and send."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import pytest
from mailblast.v1 import campaigns_pb2, lists_imports_pb2, lists_pb2
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """One scrape of /metrics: every sample by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value, 0 when the series does not exist yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def import_csv(stack, list_id: int, text: str) -> lists_imports_pb2.ImportJob:
    """Import a CSV through lists' API, as the console does, and wait for the job to finish."""
    data = text.encode()
    lists = stack.lists_stub
    job = await lists.CreateImport(
        lists_imports_pb2.CreateImportRequest(list_id=list_id, total_bytes=len(data), file_name="people.csv"),
        metadata=stack.metadata,
    )
    await lists.UploadImportChunk(
        lists_imports_pb2.UploadImportChunkRequest(import_id=job.id, offset=0, data=data), metadata=stack.metadata
    )
    job = await lists.StartImport(lists_imports_pb2.StartImportRequest(import_id=job.id), metadata=stack.metadata)
    deadline = time.monotonic() + 60
    while job.state in ("queued", "running", "uploading"):
        assert time.monotonic() < deadline, f"import still {job.state}"
        await asyncio.sleep(0.1)
        job = await lists.GetImport(lists_imports_pb2.GetImportRequest(import_id=job.id), metadata=stack.metadata)
    return job


@pytest.mark.stack(metrics=True)
async def test_metrics_follow_real_imports_and_sends(stack, smtp_sink):
    # Each service serves Prometheus metrics on a port of its own. An import of 13 rows (one bad) counts 12
    # added and 1 failed in lists' counters; a campaign to them, where the receiving server refuses one
    # address for good and greylists another once, moves the sender's outcome and SMTP reply-class counters
    # by exactly those numbers, the fan-out's recipient counter by 12, campaigns' gRPC latency histogram
    # for SendCampaign and its error counter for a NOT_FOUND; every service reports its database pool and
    # the senders' consumer its backlog.
    ports = {
        "auth": stack.auth.metrics_port, "lists": stack.lists.metrics_port, "campaigns": stack.campaigns.metrics_port,
        "sender": stack.senders[0].metrics_port, "bounce": stack.bounce.metrics_port,
    }  # fmt: skip
    assert all(ports.values()) and len(set(ports.values())) == 5
    before = scrape(ports["sender"])

    created = await stack.lists_stub.CreateList(lists_pb2.CreateListRequest(name="metrics"), metadata=stack.metadata)
    rows = [f"person{i}@example.com,Person {i}" for i in range(10)]
    rows += ["gone@example.net,Gone", "not-an-address,Broken", "busy@example.net,Busy"]
    job = await import_csv(stack, created.id, "email,name\n" + "\n".join(rows) + "\n")
    assert (job.rows_added, job.rows_failed) == (12, 1)
    after_import = scrape(ports["lists"])
    assert (
        value(after_import, "mailblast_import_rows_total", service="lists", result="added")
        - value(before, "mailblast_import_rows_total", service="lists", result="added")
        == 12
    )
    assert (
        value(after_import, "mailblast_import_rows_total", service="lists", result="failed")
        - value(before, "mailblast_import_rows_total", service="lists", result="failed")
        == 1
    )

    greylisted: set[str] = set()

    def reply(address: str, seen: int) -> str | None:
        if address == "gone@example.net":
            return "550 5.1.1 no such user"
        if address == "busy@example.net" and address not in greylisted:
            greylisted.add(address)
            return "451 4.7.1 greylisted, try again"
        return None

    smtp_sink.reply = reply
    sent = await stack.send_campaign([created.id])
    done = await stack.wait_campaign(sent.id, lambda c: c.counters.sent == 11 and c.counters.bounced == 1)
    assert done.counters.deferred == 0
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.campaigns_stub.GetCampaign(
            campaigns_pb2.GetCampaignRequest(campaign_id=sent.id + 1000), metadata=stack.metadata
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    after = scrape(ports["sender"])

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    campaign = {"service": "sender", "kind": "campaign"}
    assert moved("mailblast_messages_total", **campaign, outcome="sent") == 11
    assert moved("mailblast_messages_total", **campaign, outcome="rejected") == 1
    assert moved("mailblast_messages_total", **campaign, outcome="deferred") == 1
    assert moved("mailblast_smtp_replies_total", service="sender", reply_class="2xx") == 11
    assert moved("mailblast_smtp_replies_total", service="sender", reply_class="4xx") == 1
    assert moved("mailblast_smtp_replies_total", service="sender", reply_class="5xx") == 1
    assert moved("mailblast_fanout_recipients_total", service="campaigns") == 12
    assert moved("mailblast_fanout_batches_total", service="campaigns") >= 1
    send = {"service": "campaigns", "method": "/mailblast.v1.CampaignsService/SendCampaign", "code": "OK"}
    assert moved("mailblast_grpc_server_handling_seconds_count", **send) == 1
    assert moved("mailblast_grpc_server_handling_seconds_sum", **send) > 0
    get = {"service": "campaigns", "method": "/mailblast.v1.CampaignsService/GetCampaign"}
    assert moved("mailblast_grpc_server_errors_total", **get, code="NOT_FOUND") == 1
    assert moved("mailblast_grpc_server_handling_seconds_count", **get, code="OK") >= 1
    # The senders' batch consumer reports its backlog: nothing waits once the campaign is done.
    assert ("mailblast_consumer_pending_messages", (("durable", "sender-batches"), ("service", "sender"))) in after
    assert value(after, "mailblast_consumer_pending_messages", service="sender", durable="sender-batches") == 0
    assert moved("mailblast_consumer_messages_total", service="sender", durable="sender-batches", decision="ack") >= 1
    for service, port in ports.items():
        samples = scrape(port)
        assert value(samples, "mailblast_db_pool_max_connections", service=service) >= 1, service
        held = value(samples, "mailblast_db_pool_connections", service=service)
        assert held >= 1 and held == value(samples, "mailblast_db_pool_idle_connections", service=service) + value(
            samples, "mailblast_db_pool_used_connections", service=service
        )
