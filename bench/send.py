"""End-to-end send benchmark: a campaign through every service into a sink that costs almost nothing.

Runs `make run`'s supervisor (embedded PostgreSQL and NATS, every service) twice, with one sender process
and with two, each against its own STARTTLS sink (bench/sink.py, on uvloop), imports N recipients, sends
one campaign with a ~10 KB HTML body with personal fields, DKIM rsa-sha256, and measures messages per
second from SendCampaign until the campaign is sent, with the CPU each kind of process spent per message
(read from /proc). In the same run: a bare aiosmtplib client sending the same size of message into the
same kind of sink, and OpenSSL's RSA-2048 signing rate, so the figures read as ratios on any machine.
A sample of the delivered messages is verified with dkimpy and with Mail::DKIM (an independent verifier).
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
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import grpc
from mailblast.v1 import campaigns_pb2, campaigns_pb2_grpc, lists_pb2, lists_pb2_grpc

from bench.cpu import KINDS, CpuSnapshot
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


def rsa_sign_rate(seconds: float = 2.0) -> tuple[float, float]:
    """RSA-2048 PKCS#1 v1.5 signatures through OpenSSL on one core: per second of CPU time (what a loaded
    machine does not change much) and per second of wall time."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        key.sign(b"x" * 64, padding.PKCS1v15(), hashes.SHA256())
        count += 1
    return count / (time.process_time() - cpu), count / (time.perf_counter() - start)


async def bare_client(port: int, cert: Path, message: bytes, total: int, connections: int) -> tuple[float, float]:
    """Messages per second of plain aiosmtplib clients (STARTTLS, reused connections) into the sink, and
    the client's own CPU seconds."""
    context = ssl.create_default_context(cafile=str(cert))
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=context) as smtp:
            while remaining > 0:
                remaining -= 1
                await smtp.sendmail("bench@example.com", [f"bare{remaining}@example.net"], message)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return total / (time.perf_counter() - start), time.process_time() - cpu


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


async def pipeline(
    run: dict, key: bytes, console: TlsFiles, recipients: int, kb: int, roots: list[int]
) -> tuple[float, float, dict[str, float]]:
    """Import the list, send the campaign; return import seconds, end-to-end messages per second and the
    CPU seconds by kind of process from SendCampaign until the campaign was sent."""
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
        before = CpuSnapshot(roots)
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
        seconds = time.perf_counter() - start
        spent = CpuSnapshot(roots).since(before)
        if got.counters.sent != recipients:
            raise RuntimeError(f"only {got.counters.sent} of {recipients} sent: {got.counters}")
        return imported, recipients / seconds, spent


class Sink:
    """bench/sink.py in a process of its own, keeping every `every`-th message in `samples`."""

    def __init__(self, cert: Path, key: Path, samples: Path, every: int) -> None:
        self.port = free_port()
        self.samples = samples
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sink", "--port", str(self.port), "--cert", str(cert), "--key", str(key),
             "--samples", str(samples), "--sample-every", str(every)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_port("127.0.0.1", self.port, 30, self.proc)

    def stop(self) -> int:
        """Stop the sink; the number of messages it accepted."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return int(out.split()[1]) if out.startswith("accepted") else -1


@dataclass
class Round:
    """One pipeline run: how many senders, the figures, and where its samples and secrets are."""

    senders: int
    # "" for this tree, "before" for the --baseline tree.
    tree: str = ""
    imported: float = 0.0
    rate: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    accepted: int = 0
    samples: Path | None = None
    secrets: Path | None = None


def pipeline_round(
    work: Path, cert: Path, key_file: Path, args: argparse.Namespace, senders: int, root: Path = ROOT
) -> Round:
    """Start the services of the tree at `root` with `senders` sender processes and a fresh sink, send one
    campaign, stop."""
    tree = "" if root == ROOT else "before"
    name = f"{tree}{senders}"
    result = Round(senders, tree, samples=work / f"samples-{name}", secrets=work / f"var-{name}" / "secrets")
    sink = Sink(cert, key_file, result.samples, max(1, args.recipients // args.samples))
    env = dict(os.environ)
    for variable in ("DATABASE_URL", "NATS_URL"):
        env.pop(variable, None)  # embedded servers, as on a fresh machine
    var = work / f"var-{name}"
    env.update(
        MAILBLAST_VAR_DIR=str(var),
        MAILBLAST_SENDER_PROCESSES=str(senders),
        GATEWAY_BIND=f"127.0.0.1:{free_port()}",
        SENDER_RELAY_HOST="127.0.0.1",
        SENDER_RELAY_PORT=str(sink.port),
        SENDER_TLS="required",
        SENDER_TLS_CA_FILE=str(cert),
        SENDER_CONCURRENCY=str(args.concurrency),
        OTEL_TRACES_EXPORTER="none",
        # rsa-sha256 only, as the benchmark's issue specifies (make run signs with ed25519 too).
        SENDER_DKIM_ED25519_SELECTOR="",
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "dev.run"], cwd=root, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        run = wait_ready(supervisor, var / "run.json", 180)
        if len(run["sender"]) != senders:
            raise RuntimeError(
                f"{root}'s make run started {len(run['sender'])} senders, not {senders}: it predates "
                "MAILBLAST_SENDER_PROCESSES; copy this tree's dev/run.py into it (bench/README.md)"
            )
        internal_key = (var / "secrets" / "internal.key").read_bytes().strip()
        console = TlsFiles.in_directory(var / "secrets" / "grpc" / "gateway")
        print(f"{tree or 'this tree'}, {senders} sender(s): up, importing {args.recipients} subscribers", flush=True)
        result.imported, result.rate, result.cpu = asyncio.run(
            pipeline(run, internal_key, console, args.recipients, args.html_kb, [supervisor.pid, sink.proc.pid])
        )
    finally:
        os.killpg(supervisor.pid, signal.SIGINT)
        try:
            supervisor.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
        result.accepted = sink.stop()
    print(f"{tree or 'this tree'}, {senders} sender(s): {result.rate:.0f} messages/s", flush=True)
    return result


def bare_round(work: Path, cert: Path, key_file: Path, args: argparse.Namespace, connections: int) -> Round:
    """The bare aiosmtplib client into a fresh sink of the same kind: messages/s, client and sink CPU."""
    sink = Sink(cert, key_file, work / "samples-bare", args.recipients)
    message = ("Subject: bench\r\nFrom: bench@example.com\r\n\r\n" + "x" * 76 + "\r\n") * (args.html_kb * 1024 // 120)
    before = CpuSnapshot([sink.proc.pid])
    try:
        rate, client = asyncio.run(bare_client(sink.port, cert, message.encode(), args.recipients, connections))
        spent = CpuSnapshot([sink.proc.pid]).since(before)
    finally:
        accepted = sink.stop()
    return Round(0, rate=rate, cpu={**spent, "client": client}, accepted=accepted)


def verify_samples(rounds: list[Round]) -> str:
    """Verify every kept message of the pipeline rounds with dkimpy and Mail::DKIM; a summary line."""
    import dkim

    from dev.run import DKIM_DOMAIN, DKIM_RSA_SELECTOR, ensure_secrets
    from dev.run import dkim_txt_values as txt_values
    from tests.support.dkim_verify import mail_dkim_many
    from tests.support.dns import DnsServer

    checked = 0
    for result in rounds:
        files, _ = ensure_secrets(result.secrets)
        records = txt_values(files)
        messages = [path.read_bytes() for path in sorted(result.samples.glob("*.eml"))]
        if not messages:
            raise RuntimeError(f"the sink kept no message in {result.samples}")
        dns_name = f"{DKIM_RSA_SELECTOR}._domainkey.{DKIM_DOMAIN}."
        for message in messages:
            if not dkim.verify(message, dnsfunc=lambda name, timeout=5, r=records: r[name.decode()].encode()):
                raise RuntimeError(f"dkimpy refuses a delivered message of the {result.senders}-sender round")
        server = DnsServer()
        server.start()
        try:
            server.add_zone(DKIM_DOMAIN)
            server.add_txt(dns_name, records[dns_name])
            for checks in mail_dkim_many(messages, server):
                if not any(check.passed and check.algorithm == "rsa-sha256" for check in checks):
                    raise RuntimeError(f"Mail::DKIM refuses a delivered message: {checks}")
        finally:
            server.stop()
        checked += len(messages)
    return f"DKIM: {checked} delivered messages verified by dkimpy and by Mail::DKIM (rsa-sha256), all pass"


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=int(os.environ.get("BENCH_RECIPIENTS", 20_000)))
    parser.add_argument("--html-kb", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64, help="deliveries at once per sender process")
    parser.add_argument(
        "--senders", default=os.environ.get("BENCH_SENDERS", "1,2"), help="sender processes per round, in order"
    )
    parser.add_argument("--samples", type=int, default=20, help="delivered messages to verify per round")
    parser.add_argument(
        "--baseline", type=Path, help="another tree (e.g. an older commit) measured round by round beside this one"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mailblast-bench-"))
    cert, key_file = make_self_signed(work / "sink-tls", "localhost")
    print(
        f"mailblast send benchmark: {args.recipients} recipients, ~{args.html_kb} KB HTML with personal fields, "
        f"DKIM rsa-sha256, STARTTLS, {args.concurrency} deliveries at once per sender, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    rounds = []
    for n in args.senders.split(","):
        # Interleaved, before and after at each count, so both meet about the same load.
        if args.baseline is not None:
            rounds.append(pipeline_round(work, cert, key_file, args, int(n), args.baseline.resolve()))
        rounds.append(pipeline_round(work, cert, key_file, args, int(n)))
    bare = bare_round(work, cert, key_file, args, max(r.senders for r in rounds) * args.concurrency)
    rsa_rate, rsa_wall = rsa_sign_rate()
    verified = verify_samples(rounds)
    report(args.recipients, rounds, bare, rsa_rate, rsa_wall)
    print(verified)
    for result in [*rounds, bare]:
        expected = args.recipients
        if result.accepted != expected:
            raise SystemExit(f"a sink accepted {result.accepted} messages, expected {expected}")


def report(recipients: int, rounds: list[Round], bare: Round, rsa_rate: float, rsa_wall: float) -> None:
    """The table: messages/s and CPU ms per message by kind of process, one column per round."""
    columns = [f"{r.tree} {r.senders} sender{'s' if r.senders > 1 else ''}".strip() for r in rounds] + ["bare client"]
    print()
    print(f"{'':34}" + "".join(f"{c:>17}" for c in columns))
    print(f"{'messages/s':34}" + "".join(f"{r.rate:17.0f}" for r in [*rounds, bare]))
    print(f"{'import, rows/s':34}" + "".join(f"{recipients / r.imported:17.0f}" for r in rounds))
    print("CPU ms per message:")
    for kind in (*KINDS, "client"):
        values = [r.cpu.get(kind) for r in [*rounds, bare]]
        if any(values):
            cells = "".join(f"{v * 1000 / recipients:17.3f}" if v is not None else f"{'':17}" for v in values)
            print(f"  {kind:32}" + cells)
    cells = "".join(f"{sum(r.cpu.values()) * 1000 / recipients:17.3f}" for r in [*rounds, bare])
    print(f"  {'all':32}" + cells)
    print(
        f"OpenSSL RSA-2048 signatures on one core: {rsa_rate:.0f} per CPU-second ({1000 / rsa_rate:.3f} ms of CPU "
        f"each, one per message), {rsa_wall:.0f} per wall-clock second"
    )
    for tree in sorted({r.tree for r in rounds}):
        label = f"{tree}: " if tree else ("after: " if len({r.tree for r in rounds}) > 1 else "")
        by = {r.senders: r for r in rounds if r.tree == tree}
        if 1 in by and 2 in by:
            print(f"{label}ratio 2 senders / 1 sender: {by[2].rate / by[1].rate:6.2f}")
        best = max(by.values(), key=lambda r: r.rate)
        print(f"{label}ratio end to end / bare client: {best.rate / bare.rate:6.2f}")
        for n, r in sorted(by.items()):
            rsa_ratio = r.cpu.get("sender", 0.0) / recipients * rsa_rate
            print(f"{label}{n} sender(s): sender CPU per message / one RSA-2048 signature: {rsa_ratio:6.2f}")
    before = {r.senders: r for r in rounds if r.tree}
    for r in rounds:
        old = before.get(r.senders)
        if not r.tree and old is not None and old.cpu.get("sender"):
            ratio = r.cpu["sender"] / old.cpu["sender"]
            print(f"{r.senders} sender(s): sender CPU per message, after / before: {ratio:6.2f}")


if __name__ == "__main__":
    main()
