"""`make bench-import`: a 1,000,000-row CSV with 5 custom fields through an import job, next to a raw COPY.

Starts an embedded PostgreSQL (fsync off, as in the tests) and NATS, the lists service in this process,
generates the file, uploads it in 1 MiB chunks over gRPC, runs the job to the end and prints its time;
then COPYs the same file into a plain table on the same server and prints that time too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import tempfile
import time
from pathlib import Path

import grpc
import psycopg
from mailblast.v1 import (
    lists_fields_pb2,
    lists_fields_pb2_grpc,
    lists_imports_pb2,
    lists_imports_pb2_grpc,
    lists_pb2,
    lists_pb2_grpc,
)

from cli import nats_credentials
from dev.embedded import EmbeddedServer, start_nats, start_postgres
from dev.run import ensure_grpc_certificates
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.lists.config import Config
from services.lists.service import start

TICKS = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def cpu_seconds(pid: int, tree: dict[int, list[int]] | None = None) -> float:
    """CPU time used by a process and its descendants, living or already reaped (Linux /proc)."""
    tree = _children() if tree is None else tree
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: the last two hold children that exited and were waited for.
    own = sum(int(f) for f in fields[11:15]) / TICKS
    return own + sum(cpu_seconds(child, tree) for child in tree.get(pid, []))


PREFS = ["東京都", "大阪府", "北海道", "福岡県", "沖縄県", "京都府"]
PLANS = ["gold", "silver", "bronze"]


def generate(path: Path, rows: int) -> None:
    """Write the test file: email, name and five custom fields, UTF-8."""
    rng = random.Random(7)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,pref,birthday,points,plan,note\n")
        for i in range(rows):
            out.write(
                f"user{i}@example{i % 97}.com,利用者 {i},{PREFS[i % 6]},"
                f"19{50 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d},{rng.randint(0, 100000)},"
                f"{PLANS[i % 3]},メモ{i % 1000}\n"
            )


async def run(rows: int, workdir: Path) -> None:
    """Run both measurements and print them."""
    pg = start_postgres(workdir / "pg" / "data", durable=False)
    trust = nats_credentials.init(workdir / "nats-trust")
    nats = start_nats(workdir / "nats", config_file=trust.server_config_file)
    try:
        await _measure(rows, workdir, pg, nats.url, str(trust.creds_file("lists")))
    finally:
        nats.stop()
        pg.stop()


async def _measure(rows: int, workdir: Path, pg: EmbeddedServer, nats_url: str, nats_creds: str) -> None:
    """Import the generated file through a job, then COPY it raw, on the same server."""
    key = secrets.token_hex(32).encode()
    signer = IdentitySigner(key)
    # Calls as the console relaying an admin, over mutual TLS with certificates of a throwaway CA.
    certificates = ensure_grpc_certificates(workdir / "grpc")
    admin = Principal(organization_id=1, user_id=1, scopes=("read", "send", "admin"), service="gateway")
    md = [(IDENTITY_HEADER, signer.sign(admin, "lists"))]
    path = workdir / "subscribers.csv"
    t0 = time.monotonic()
    generate(path, rows)
    size = path.stat().st_size
    print(f"generated {rows} rows, {size / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s")
    service = await start(
        Config(
            database_url=pg.url,
            nats_url=nats_url,
            nats_creds_file=nats_creds,
            internal_key=key,
            grpc_tls=certificates["lists"],
            grpc_bind="127.0.0.1:0",
            consume_in_background=False,
        )
    )
    try:
        credentials = certificates["gateway"].channel_credentials()
        async with grpc.aio.secure_channel(f"127.0.0.1:{service.grpc_port}", credentials) as channel:
            stub = lists_pb2_grpc.ListsServiceStub(channel)
            fields = lists_fields_pb2_grpc.ListsFieldsServiceStub(channel)
            imports = lists_imports_pb2_grpc.ListsImportsServiceStub(channel)
            for field_key, type_, options in [
                ("pref", lists_fields_pb2.FIELD_TYPE_TEXT, []),
                ("birthday", lists_fields_pb2.FIELD_TYPE_DATE, []),
                ("points", lists_fields_pb2.FIELD_TYPE_NUMBER, []),
                ("plan", lists_fields_pb2.FIELD_TYPE_CHOICE, PLANS),
                ("note", lists_fields_pb2.FIELD_TYPE_TEXT, []),
            ]:
                await fields.CreateField(
                    lists_fields_pb2.CreateFieldRequest(key=field_key, type=type_, options=options), metadata=md
                )
            list_id = (await stub.CreateList(lists_pb2.CreateListRequest(name="bench"), metadata=md)).id
            t0 = time.monotonic()
            job = await imports.CreateImport(
                lists_imports_pb2.CreateImportRequest(list_id=list_id, total_bytes=size, file_name=path.name),
                metadata=md,
            )
            with path.open("rb") as f:
                offset = 0
                while block := f.read(1024 * 1024):
                    await imports.UploadImportChunk(
                        lists_imports_pb2.UploadImportChunkRequest(import_id=job.id, offset=offset, data=block),
                        metadata=md,
                    )
                    offset += len(block)
            uploaded = time.monotonic() - t0
            cpu_before = time.process_time(), cpu_seconds(os.getpid()), cpu_seconds(pg.process.pid)
            await imports.StartImport(lists_imports_pb2.StartImportRequest(import_id=job.id), metadata=md)
            while True:
                job = await imports.GetImport(lists_imports_pb2.GetImportRequest(import_id=job.id), metadata=md)
                if job.state in ("done", "failed"):
                    break
                await asyncio.sleep(0.2)
            total = time.monotonic() - t0
            own_cpu = time.process_time() - cpu_before[0]
            tree_cpu = cpu_seconds(os.getpid()) - cpu_before[1]
            pg_cpu = cpu_seconds(pg.process.pid) - cpu_before[2]
    finally:
        await service.stop()
    print(
        f"import job: {total:.1f} s ({uploaded:.1f} s upload), state {job.state}, {job.rows_added} added,"
        f" {job.rows_failed} failed, {rows / total:,.0f} rows/s {job.error}"
    )
    # The machine may be shared: CPU seconds per row say what the job costs whatever else runs.
    others = tree_cpu - own_cpu - pg_cpu
    print(
        f"job CPU after upload: PostgreSQL {pg_cpu:.1f} s ({pg_cpu / rows * 1e6:.0f} µs/row),"
        f" service process with the bench client {own_cpu:.1f} s ({own_cpu / rows * 1e6:.0f} µs/row),"
        f" parse worker and NATS {others:.1f} s"
        f" ({others / rows * 1e6:.0f} µs/row); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_copy (email text, name text, pref text, birthday text, points text, plan text, note text)"
        )
        t0 = time.monotonic()
        with (
            conn.cursor().copy("COPY raw_copy FROM STDIN WITH (FORMAT csv, HEADER true)") as copy,
            path.open("rb") as f,
        ):
            while block := f.read(1024 * 1024):
                copy.write(block)
        raw = time.monotonic() - t0
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        copy_cpu = cpu_seconds(backend)
    print(
        f"raw COPY into a plain table: {raw:.1f} s ({rows / raw:,.0f} rows/s, PostgreSQL CPU {copy_cpu:.1f} s);"
        f" job / COPY = {total / raw:.1f}x"
    )


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailblast-bench-import-") as tmp:
        asyncio.run(run(args.rows, Path(tmp)))


if __name__ == "__main__":
    main()
