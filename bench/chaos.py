"""Chaos benchmark: one campaign per scenario while faults are injected; what arrived, what was lost, how fast.

Each scenario gets a fresh installation: its own PostgreSQL and NATS (started here, so this benchmark can
kill and restart them), `make run`'s supervisor with every service and two senders, and a recording
STARTTLS sink in a process of its own. It sends one campaign of N recipients (~5 KB HTML) and injects
the scenario's faults until the campaign is sent (or the time bound passes), then prints, per scenario:
recipients delivered once or more, lost, extra copies (and whether each carries its first copy's
Message-ID), the campaign's own sent counter against the sink's, the campaign's time, and the time from
the last fault to the last delivery. A benchmark, not a test: loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from mailblast.v1 import campaigns_pb2, campaigns_pb2_grpc, lists_pb2, lists_pb2_grpc

from bench.send import html_body, wait_ready
from dev.embedded import EmbeddedServer, free_port, start_nats, start_postgres, wait_for_port
from dev.tls import make_self_signed
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.common.rpc import TlsFiles

ROOT = Path(__file__).resolve().parents[1]
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


# ------------------------------------------------------------------------------------------ the sink


def run_sink(port: int, cert: Path, key: Path, record: Path, defer_file: Path) -> None:
    """A STARTTLS sink that appends "recipient Message-ID time" per accepted message to `record`.

    While `defer_file` holds a future Unix time, it answers 451 to a fixed 30% of recipients.
    """
    from dev.catcher import CaughtMessage, SmtpCatcher

    out = record.open("a", buffering=1)
    lock = threading.Lock()

    class Recording(SmtpCatcher):
        def _keep(self, message: CaughtMessage) -> None:
            found = _MESSAGE_ID.search(message.data)
            message_id = found.group(1).decode() if found else "-"
            with lock:
                for rcpt in message.rcpt_tos:
                    out.write(f"{rcpt} {message_id} {message.received_at:.3f}\n")

    def reply(address: str, seen: int) -> str | None:
        try:
            until = float(defer_file.read_text() or 0)
        except (OSError, ValueError):
            until = 0.0
        if time.time() < until and zlib.crc32(address.encode()) % 10 < 3:
            return "451 4.7.1 chaos: try again later"
        return None

    sink = Recording(cert, key, port, keep_in_memory=False)
    sink.reply = reply
    sink.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    sink.stop()
    out.close()


# --------------------------------------------------------------------------------- the installation


@dataclass
class Installation:
    """PostgreSQL, NATS, the supervisor with its services, and the sink of one scenario."""

    work: Path
    recipients: int
    postgres: EmbeddedServer | None = None
    nats: EmbeddedServer | None = None
    supervisor: subprocess.Popen | None = None
    sink: subprocess.Popen | None = None
    sink_port: int = 0
    run: dict = field(default_factory=dict)
    faults: list[tuple[float, str]] = field(default_factory=list)

    @property
    def record(self) -> Path:
        """The sink's record of accepted messages."""
        return self.work / "sink.log"

    @property
    def defer_file(self) -> Path:
        """Holds the time until which the sink defers 30% of recipients."""
        return self.work / "defer-until"

    def start(self) -> None:
        """Start everything and wait until the services answer."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.postgres = start_postgres(self.work / "pg", log_path=self.work / "postgres.log", own_session=True)
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE mailblast")
        self.nats = start_nats(self.work / "nats", log_path=self.work / "nats.log", own_session=True)
        cert, key = make_self_signed(self.work / "sink-tls", "localhost")
        self.sink_port = free_port()
        self.sink = subprocess.Popen(
            [sys.executable, "-m", "bench.chaos", "sink", "--port", str(self.sink_port), "--cert", str(cert),
             "--key", str(key), "--record", str(self.record), "--defer-file", str(self.defer_file)],
            cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        wait_for_port("127.0.0.1", self.sink_port, 30, self.sink)
        env = dict(os.environ)
        env.update(
            MAILBLAST_VAR_DIR=str(self.work / "var"),
            DATABASE_URL=self.postgres.url.rsplit("/", 1)[0] + "/mailblast",
            NATS_URL=self.nats.url,
            GATEWAY_BIND=f"127.0.0.1:{free_port()}",
            SENDER_RELAY_HOST="127.0.0.1",
            SENDER_RELAY_PORT=str(self.sink_port),
            SENDER_TLS="required",
            SENDER_TLS_CA_FILE=str(cert),
            SENDER_RETRY_BASE_SECONDS="2",
            SENDER_RETRY_MAX_SECONDS="20",
            OTEL_TRACES_EXPORTER="none",
        )
        self.supervisor = subprocess.Popen(
            [sys.executable, "-m", "dev.run"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=(self.work / "supervisor.log").open("wb"), start_new_session=True,
        )  # fmt: skip
        self.run = wait_ready(self.supervisor, self.work / "var" / "run.json", 180)

    def stop(self) -> None:
        """Stop the supervisor (and its services), the sink and the servers."""
        if self.supervisor is not None:
            try:
                os.killpg(self.supervisor.pid, signal.SIGINT)
                self.supervisor.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.supervisor.pid, signal.SIGKILL)
        if self.sink is not None:
            self.sink.terminate()
            self.sink.wait(10)
        for server in (self.nats, self.postgres):
            if server is not None:
                server.stop()

    # -- faults

    def fault(self, what: str) -> None:
        """Note a fault now."""
        self.faults.append((time.time(), what))

    def sender_pids(self) -> list[int]:
        """The live sender processes of this installation."""
        var = str(self.work / "var").encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                if b"services.sender" in cmdline and var in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return sorted(pids)

    def kill_a_sender(self) -> None:
        """SIGKILL one sender process (the supervisor is to start it again)."""
        pids = self.sender_pids()
        if pids:
            victim = pids[len(self.faults) % len(pids)]
            os.kill(victim, signal.SIGKILL)
            self.fault(f"sender {victim} killed")

    def kill_nats(self) -> None:
        """kill -9 the NATS server."""
        assert self.nats is not None
        self.nats.process.kill()
        self.nats.process.wait(10)
        self.fault("nats killed")

    def start_nats_again(self) -> None:
        """Start NATS on its port and store again."""
        port = int(self.nats.url.rsplit(":", 1)[1]) if self.nats else free_port()
        self.nats = start_nats(self.work / "nats", port=port, log_path=self.work / "nats.log", own_session=True)
        self.fault("nats back")

    def restart_postgres(self) -> None:
        """PostgreSQL's immediate shutdown (as `pg_ctl restart -m immediate`), then start it at once."""
        assert self.postgres is not None
        port = int(self.postgres.url.rsplit(":", 1)[1].split("/")[0])
        self.postgres.process.send_signal(signal.SIGQUIT)
        self.postgres.process.wait(30)
        self.postgres = start_postgres(self.work / "pg", port=port, log_path=self.work / "postgres.log",
                                       own_session=True)  # fmt: skip
        self.fault("postgres restarted")

    def defer_for(self, seconds: float) -> None:
        """The sink answers 451 to 30% of recipients for `seconds`."""
        self.defer_file.write_text(str(time.time() + seconds))
        self.fault(f"sink defers 30% for {seconds:.0f} s")

    # -- the campaign

    async def campaign(self, during: Callable[[Installation, float], Awaitable[None]], bound: float) -> dict:
        """Import N recipients, send, run `during` until the campaign is sent or `bound` passes; the figures."""
        key = (self.work / "var" / "secrets" / "internal.key").read_bytes().strip()
        signer = IdentitySigner(key)
        principal = Principal(organization_id=1, scopes=("read", "send", "admin"), service="gateway")
        console = TlsFiles.in_directory(self.work / "var" / "secrets" / "grpc" / "gateway")

        def md(audience: str) -> list[tuple[str, str]]:
            return [(IDENTITY_HEADER, signer.sign(principal, audience))]

        credentials = console.channel_credentials()
        async with (
            grpc.aio.secure_channel(self.run["lists"], credentials) as lc,
            grpc.aio.secure_channel(self.run["campaigns"], credentials) as cc,
        ):
            lists = lists_pb2_grpc.ListsServiceStub(lc)
            campaigns = campaigns_pb2_grpc.CampaignsServiceStub(cc)
            created = await lists.CreateList(lists_pb2.CreateListRequest(name="chaos"), metadata=md("lists"))
            for first in range(0, self.recipients, 5000):
                rows = [
                    lists_pb2.SubscriberInput(email=f"user{i:07d}@example.net", name=f"利用者{i}")
                    for i in range(first, min(self.recipients, first + 5000))
                ]
                await lists.AddSubscribers(
                    lists_pb2.AddSubscribersRequest(list_id=created.id, subscribers=rows), metadata=md("lists")
                )
            campaign = await campaigns.CreateCampaign(
                campaigns_pb2.CreateCampaignRequest(
                    name="chaos", list_ids=[created.id], from_address="news@mailblast.example.com",
                    from_name="カオス", subject="{{ name }}様へ", html_body=html_body(5),
                    text_body="{{ name }}様\nご案内です。",
                ),
                metadata=md("campaigns"),
            )  # fmt: skip
            start = time.time()
            await campaigns.SendCampaign(
                campaigns_pb2.SendCampaignRequest(campaign_id=campaign.id), metadata=md("campaigns")
            )
            injector = asyncio.create_task(during(self, start))
            counters = None
            while time.time() - start < bound:
                try:
                    got = await campaigns.GetCampaign(
                        campaigns_pb2.GetCampaignRequest(campaign_id=campaign.id), metadata=md("campaigns"), timeout=5
                    )
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(1)
                    continue
                counters = got.counters
                if got.state == campaigns_pb2.CAMPAIGN_STATE_SENT and injector.done():
                    break
                await asyncio.sleep(0.5)
            injector.cancel()
            finished = time.time()
        return self.figures(start, finished, counters, bound)

    def figures(self, start: float, finished: float, counters, bound: float) -> dict:
        """What the sink recorded against what the campaign counted."""
        first_id: dict[str, str] = {}
        extra = same_id = 0
        last = start
        for line in self.record.read_text().splitlines() if self.record.exists() else []:
            rcpt, message_id, at = line.split(" ")
            last = max(last, float(at))
            if rcpt in first_id:
                extra += 1
                same_id += first_id[rcpt] == message_id
            else:
                first_id[rcpt] = message_id
        unique = len(first_id)
        last_fault = max((t for t, _ in self.faults), default=start)
        return {
            "unique": unique,
            "lost": self.recipients - unique,
            "extra": extra,
            "extra_same_id": same_id,
            "counted": counters.sent if counters is not None else -1,
            "campaign_s": last - start,
            "after_last_fault_s": max(0.0, last - last_fault),
            "timed_out": finished - start >= bound,
            "faults": len(self.faults),
        }


# ------------------------------------------------------------------------------------------ scenarios


async def no_faults(inst: Installation, start: float) -> None:
    """Nothing happens."""


async def sender_kill_storm(inst: Installation, start: float) -> None:
    """A sender SIGKILLed every 10 s, 12 times (or until the sink has everyone)."""
    for _ in range(12):
        await asyncio.sleep(10)
        if _delivered(inst) >= inst.recipients:
            return
        inst.kill_a_sender()


async def nats_kill(inst: Installation, start: float) -> None:
    """NATS kill -9 five seconds in, started again 10 s later."""
    await asyncio.sleep(5)
    inst.kill_nats()
    await asyncio.sleep(10)
    inst.start_nats_again()


async def postgres_restart(inst: Installation, start: float) -> None:
    """PostgreSQL restarted in immediate mode five seconds in."""
    await asyncio.sleep(5)
    inst.restart_postgres()


async def sink_defers(inst: Installation, start: float) -> None:
    """The sink answers 451 to 30% of recipients for 60 s from the start."""
    inst.defer_for(60)
    await asyncio.sleep(60)
    inst.fault("sink accepts everyone again")


async def everything(inst: Installation, start: float) -> None:
    """All of the above together."""
    inst.defer_for(60)
    await asyncio.sleep(5)
    inst.kill_a_sender()
    inst.restart_postgres()
    await asyncio.sleep(5)
    inst.kill_nats()
    await asyncio.sleep(10)
    inst.start_nats_again()
    for _ in range(4):
        await asyncio.sleep(10)
        inst.kill_a_sender()
    await asyncio.sleep(max(0.0, start + 60 - time.time()))
    inst.fault("sink accepts everyone again")


def _delivered(inst: Installation) -> int:
    if not inst.record.exists():
        return 0
    return len({line.split(" ", 1)[0] for line in inst.record.read_text().splitlines()})


SCENARIOS: dict[str, Callable[[Installation, float], Awaitable[None]]] = {
    "no faults": no_faults,
    "sender SIGKILL every 10 s": sender_kill_storm,
    "nats kill -9, back 10 s later": nats_kill,
    "postgres restart -m immediate": postgres_restart,
    "sink 451 to 30% for 60 s": sink_defers,
    "all together": everything,
}


def main() -> None:
    """Run the scenarios and print the table."""
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        parser = argparse.ArgumentParser()
        parser.add_argument("sink")
        for name in ("--port", "--cert", "--key", "--record", "--defer-file"):
            parser.add_argument(name, required=True)
        a = parser.parse_args()
        run_sink(int(a.port), Path(a.cert), Path(a.key), Path(a.record), Path(a.defer_file))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=int(os.environ.get("CHAOS_RECIPIENTS", 20_000)))
    parser.add_argument("--bound", type=float, default=600.0, help="seconds a scenario may take at most")
    parser.add_argument("--only", action="append", help="run only scenarios whose name contains this")
    args = parser.parse_args()
    chosen = {n: s for n, s in SCENARIOS.items() if not args.only or any(o in n for o in args.only)}
    root = Path(tempfile.mkdtemp(prefix="mailblast-chaos-"))
    print(f"mailblast chaos benchmark: {args.recipients} recipients per scenario, {os.cpu_count()} CPUs, in {root}")
    results: dict[str, dict] = {}
    for index, (name, scenario) in enumerate(chosen.items()):
        inst = Installation(root / f"s{index}", args.recipients)
        try:
            inst.start()
            results[name] = asyncio.run(inst.campaign(scenario, args.bound))
        finally:
            inst.stop()
        r = results[name]
        print(f"  {name}: {r}", flush=True)
    header = (
        f"{'scenario':32} {'unique':>7} {'lost':>5} {'extra':>6} {'same id':>8} {'counted':>8} "
        f"{'campaign s':>10} {'after last fault s':>18}"
    )
    print(header)
    for name, r in results.items():
        same = "all" if r["extra_same_id"] == r["extra"] else f"{r['extra_same_id']}"
        timed = " (time bound reached)" if r["timed_out"] else ""
        print(
            f"{name:32} {r['unique']:7d} {r['lost']:5d} {r['extra']:6d} {same:>8} {r['counted']:8d} "
            f"{r['campaign_s']:10.1f} {r['after_last_fault_s']:18.1f}{timed}"
        )
    base = results.get("no faults")
    if base:
        print(f"fault-free campaign: {base['campaign_s']:.1f} s; json: {json.dumps(results)}")


if __name__ == "__main__":
    main()
