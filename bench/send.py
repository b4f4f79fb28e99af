"""End-to-end send benchmark: a campaign through every service into a local STARTTLS sink.

Runs `make run`'s supervisor (embedded PostgreSQL and NATS, every service, two senders) against an
SMTP sink in a process of its own, sends one campaign of N recipients with a ~10 KB HTML body, and
measures messages per second from SendCampaign until the campaign is sent. In the same run it
measures a bare aiosmtplib client sending the same size of message to the same sink, and OpenSSL's
RSA-2048 signing rate, so the figures can be read as ratios on whatever machine runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
import grpc
from mailblast.v1 import campaigns_pb2, campaigns_pb2_grpc, lists_pb2, lists_pb2_grpc

from dev.embedded import free_port, wait_for_port
from dev.tls import make_self_signed
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.common.rpc import TlsFiles

ROOT = Path(__file__).resolve().parents[1]


def html_body(kb: int) -> str:
    """A newsletter-like HTML body of about `kb` kilobytes with personal fields."""
    row = "<tr><td style='padding:8px'>{{ name }}様、今月のおすすめ商品をご案内します。Lorem ipsum.</td></tr>\n"
    body = "".join(row for _ in range(kb * 1024 // len(row.encode()) + 1))
    return f"<html><body><h1>{{{{ name }}}}様へ</h1><table>{body}</table><p>{{{{ email }}}}</p></body></html>"


def rsa_sign_rate(seconds: float = 2.0) -> float:
    """RSA-2048 PKCS#1 v1.5 signatures per second on one core through OpenSSL."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        key.sign(b"x" * 64, padding.PKCS1v15(), hashes.SHA256())
        count += 1
    return count / (time.perf_counter() - start)


async def bare_client(port: int, cert: Path, message: bytes, total: int, connections: int) -> float:
    """Messages per second of plain aiosmtplib clients (STARTTLS, reused connections) into the sink."""
    context = ssl.create_default_context(cafile=str(cert))
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=context) as smtp:
            while remaining > 0:
                remaining -= 1
                await smtp.sendmail("bench@example.com", [f"bare{remaining}@example.net"], message)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return total / (time.perf_counter() - start)


def wait_ready(proc: subprocess.Popen, run_file: Path, timeout: float) -> dict:
    """Wait for the supervisor's run file, failing if it exits first."""
    deadline = time.monotonic() + timeout
    while not run_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"make run's supervisor exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("the services did not come up")
        time.sleep(0.2)
    return json.loads(run_file.read_text())


async def pipeline(run: dict, key: bytes, console: TlsFiles, recipients: int, kb: int) -> tuple[float, float]:
    """Import the list, send the campaign, and return (import seconds, end-to-end messages per second)."""
    # Calls as the console relaying an admin: its certificate from the run's own var/secrets.
    principal = Principal(organization_id=1, scopes=("read", "send", "admin"), service="gateway")
    signer = IdentitySigner(key)

    def md(audience: str) -> list[tuple[str, str]]:
        return [(IDENTITY_HEADER, signer.sign(principal, audience))]

    credentials = console.channel_credentials()
    async with (
        grpc.aio.secure_channel(run["lists"], credentials) as lc,
        grpc.aio.secure_channel(run["campaigns"], credentials) as cc,
    ):
        lists = lists_pb2_grpc.ListsServiceStub(lc)
        campaigns = campaigns_pb2_grpc.CampaignsServiceStub(cc)
        created = await lists.CreateList(lists_pb2.CreateListRequest(name="bench"), metadata=md("lists"))
        start = time.perf_counter()
        for first in range(0, recipients, 5000):
            rows = [
                lists_pb2.SubscriberInput(email=f"user{i:07d}@example.net", name=f"利用者{i}")
                for i in range(first, min(recipients, first + 5000))
            ]
            await lists.AddSubscribers(
                lists_pb2.AddSubscribersRequest(list_id=created.id, subscribers=rows), metadata=md("lists")
            )
        imported = time.perf_counter() - start
        campaign = await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(
                name="bench", list_ids=[created.id], from_address="news@mailblast.example.com",
                from_name="ベンチ", subject="{{ name }}様へ 今月のご案内", html_body=html_body(kb),
                text_body="{{ name }}様\n今月のご案内です。",
            ),
            metadata=md("campaigns"),
        )  # fmt: skip
        start = time.perf_counter()
        await campaigns.SendCampaign(
            campaigns_pb2.SendCampaignRequest(campaign_id=campaign.id), metadata=md("campaigns")
        )
        last_print = 0.0
        while True:
            got = await campaigns.GetCampaign(
                campaigns_pb2.GetCampaignRequest(campaign_id=campaign.id), metadata=md("campaigns")
            )
            elapsed = time.perf_counter() - start
            if elapsed - last_print > 5:
                c = got.counters
                print(
                    f"  {elapsed:6.1f}s sent {c.sent}/{recipients} deferred {c.deferred} failed {c.failed + c.bounced}"
                )
                last_print = elapsed
            if got.state == campaigns_pb2.CAMPAIGN_STATE_SENT:
                break
            await asyncio.sleep(0.2)
        if got.counters.sent != recipients:
            raise RuntimeError(f"only {got.counters.sent} of {recipients} sent: {got.counters}")
        return imported, recipients / (time.perf_counter() - start)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=int(os.environ.get("BENCH_RECIPIENTS", 20_000)))
    parser.add_argument("--html-kb", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64, help="deliveries at once per sender process")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mailblast-bench-"))
    cert, key_file = make_self_signed(work / "sink-tls", "localhost")
    sink_port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "dev.catcher", "--port", str(sink_port), "--cert", str(cert), "--key", str(key_file)],
        cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = dict(os.environ)
    for name in ("DATABASE_URL", "NATS_URL"):
        env.pop(name, None)  # embedded servers, as on a fresh machine
    env.update(
        MAILBLAST_VAR_DIR=str(work / "var"),
        GATEWAY_BIND=f"127.0.0.1:{free_port()}",
        SENDER_RELAY_HOST="127.0.0.1",
        SENDER_RELAY_PORT=str(sink_port),
        SENDER_TLS="required",
        SENDER_TLS_CA_FILE=str(cert),
        SENDER_CONCURRENCY=str(args.concurrency),
        OTEL_TRACES_EXPORTER="none",
        # rsa-sha256 only, as the benchmark's issue specifies (make run signs with ed25519 too).
        SENDER_DKIM_ED25519_SELECTOR="",
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "dev.run"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_port("127.0.0.1", sink_port, 30, sink)
        run = wait_ready(supervisor, work / "var" / "run.json", 180)
        internal_key = (work / "var" / "secrets" / "internal.key").read_bytes().strip()
        print(
            f"mailblast send benchmark: {args.recipients} recipients, ~{args.html_kb} KB HTML, DKIM rsa-sha256, "
            f"STARTTLS, {len(run['sender'])} senders x {args.concurrency}, {os.cpu_count()} CPUs"
        )
        console = TlsFiles.in_directory(work / "var" / "secrets" / "grpc" / "gateway")
        imported, e2e = asyncio.run(pipeline(run, internal_key, console, args.recipients, args.html_kb))
        message = ("Subject: bench\r\nFrom: bench@example.com\r\n\r\n" + "x" * 76 + "\r\n") * (
            args.html_kb * 1024 // 120
        )
        bare = asyncio.run(
            bare_client(sink_port, cert, message.encode(), args.recipients, len(run["sender"]) * args.concurrency)
        )
        rsa_rate = rsa_sign_rate()
    finally:
        os.killpg(supervisor.pid, signal.SIGINT)
        try:
            supervisor.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
        sink.terminate()
        sink.wait(10)
    print(
        f"import of {args.recipients} subscribers over gRPC: {imported:.1f} s ({args.recipients / imported:.0f} rows/s)"
    )
    print(f"end to end (SendCampaign -> campaign sent): {e2e:8.0f} messages/s")
    print(f"bare aiosmtplib into the same sink:         {bare:8.0f} messages/s")
    print(f"ratio end-to-end / bare client:             {e2e / bare:8.2f}")
    print(f"OpenSSL RSA-2048 signatures on one core:    {rsa_rate:8.0f} /s (DKIM's floor: one per message)")


if __name__ == "__main__":
    main()
