"""CSV import jobs of the lists service on real PostgreSQL and NATS over gRPC: encodings, bad rows, modes,
resume after a kill, rollback."""

from __future__ import annotations

import asyncio
import csv
import io
import time

import grpc
import psycopg
import pytest
from mailblast.v1 import (
    events_pb2,
    lists_fields_pb2,
    lists_imports_pb2,
    lists_pb2,
    lists_privacy_pb2,
    lists_signup_pb2,
)

from services.common import bus
from services.common.identity import IDENTITY_HEADER, IdentitySigner, Principal
from services.common.verp import RecipientRef, unsubscribe_token
from services.lists.config import Config
from services.lists.service import start
from services.lists.store import FOLD_PARTS
from tests.integration import test_lists as base
from tests.integration.test_lists import ORG, as_user, new_list
from tests.support.lists import ListsStubs

# The lists service fixtures, shared with the other lists tests.
lists_service = base.lists_service
stub = base.stub
js = base.js

ADMIN = ("read", "send", "admin")
TERMINAL = ("done", "failed", "rolled_back")


async def define_fields(stub, signer: IdentitySigner, organization_id: int = ORG) -> None:
    """The fields the test files use: a text, a date, a number and a choice."""
    md = as_user(signer, organization_id, ADMIN)
    for key, label, type_, options in [
        ("pref", "都道府県", lists_fields_pb2.FIELD_TYPE_TEXT, []),
        ("birthday", "誕生日", lists_fields_pb2.FIELD_TYPE_DATE, []),
        ("points", "ポイント", lists_fields_pb2.FIELD_TYPE_NUMBER, []),
        ("plan", "プラン", lists_fields_pb2.FIELD_TYPE_CHOICE, ["gold", "silver"]),
    ]:
        await stub.CreateField(
            lists_fields_pb2.CreateFieldRequest(key=key, label=label, type=type_, options=options), metadata=md
        )


async def upload(stub, signer, list_id: int, data: bytes, chunk: int = 1000, **options) -> int:
    """Create a job, upload the file in chunks, start it; return its id."""
    md = as_user(signer)
    job = await stub.CreateImport(
        lists_imports_pb2.CreateImportRequest(list_id=list_id, total_bytes=len(data), **options), metadata=md
    )
    for offset in range(0, len(data), chunk):
        await stub.UploadImportChunk(
            lists_imports_pb2.UploadImportChunkRequest(
                import_id=job.id, offset=offset, data=data[offset : offset + chunk]
            ),
            metadata=md,
        )
    await stub.StartImport(lists_imports_pb2.StartImportRequest(import_id=job.id), metadata=md)
    return job.id


async def wait_job(stub, signer, job_id: int, timeout: float = 60.0) -> lists_imports_pb2.ImportJob:
    """Poll the job until it ends."""
    deadline = time.monotonic() + timeout
    while True:
        job = await stub.GetImport(lists_imports_pb2.GetImportRequest(import_id=job_id), metadata=as_user(signer))
        if job.state in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"import still {job.state} after {timeout} s"
        await asyncio.sleep(0.05)


async def error_csv(stub, signer, job_id: int) -> list[list[str]]:
    """The downloadable error report, parsed."""
    data = b"".join(
        [
            c.data
            async for c in stub.StreamImportErrors(
                lists_imports_pb2.GetImportRequest(import_id=job_id), metadata=as_user(signer)
            )
        ]
    )
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))[1:]


def subscribers(database_url: str) -> dict[str, tuple]:
    """email -> (name, attributes, status) of every subscriber."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT email, name, attributes, status FROM lists.subscribers").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_shift_jis_and_bom_files_with_japanese_names(lists_service, stub, signer, database_url):
    # A file saved by Japanese Excel (Shift_JIS/CP932, Japanese headers, YYYY/MM/DD dates) and a UTF-8
    # file with a BOM are both detected and imported with their Japanese names and typed fields intact.
    await define_fields(stub, signer)
    list_id = await new_list(stub, signer)
    sjis = (
        "メールアドレス,氏名,都道府県,誕生日,ポイント,プラン\r\n"
        'taro@example.jp,山田 太郎,東京都,1990/04/01,"1,200",gold\r\n'
        "hanako@example.jp,佐藤 花子,大阪府,1985/12/24,30,silver\r\n"
        "ichiro@example.jp,鈴木 一郎,北海道,2001/1/2,5,gold\r\n"
    ).encode("cp932")
    bom = "\ufeffemail,name,pref\nkenji@example.jp,髙橋 健二,神奈川県\n".encode()
    first = await wait_job(stub, signer, await upload(stub, signer, list_id, sjis, chunk=37))
    second = await wait_job(stub, signer, await upload(stub, signer, list_id, bom))
    assert (first.state, first.encoding, first.has_header, first.rows_added, first.rows_failed) == (
        "done", "cp932", True, 3, 0,
    )  # fmt: skip
    assert first.mapping["メールアドレス"] == "email" and first.mapping["誕生日"] == "birthday"
    assert (second.state, second.encoding, second.rows_added) == ("done", "utf-8-sig", 1)
    found = subscribers(database_url)
    assert found["taro@example.jp"] == (
        "山田 太郎",
        {"pref": "東京都", "birthday": "1990-04-01", "points": 1200, "plan": "gold"},
        "active",
    )
    assert found["ichiro@example.jp"][1]["birthday"] == "2001-01-02"
    assert found["kenji@example.jp"][:2] == ("髙橋 健二", {"pref": "神奈川県"})


async def test_bad_rows_reported_good_rows_kept(lists_service, stub, signer, database_url):
    # A 200-row file where every tenth row is bad (invalid address, bad date, wrong column count,
    # undecodable bytes, a choice not offered) imports all 180 good rows; the error CSV names every bad
    # row by its row number in the file (the header is row 1) with the reason.
    await define_fields(stub, signer)
    list_id = await new_list(stub, signer)
    lines = [b"email,name,birthday,plan"]
    bad_rows = {}
    for i in range(200):
        row_number = i + 2
        if i % 10 == 3:
            kind = (i // 10) % 5
            line = [
                f"broken{i}@,N{i},2000-01-01,gold".encode(),
                f"ok{i}@example.org,N{i},2000-02-30,gold".encode(),
                f"ok{i}@example.org,N{i},2000-01-01".encode(),
                f"ok{i}@example.org,N\xff\xfe{i},2000-01-01,gold".encode("latin-1"),
                f"ok{i}@example.org,N{i},2000-01-01,platinum".encode(),
            ][kind]
            bad_rows[row_number] = ["not an email", "not a date", "expected 4 columns", "not utf-8-sig", "platinum"][
                kind
            ]
        else:
            line = f"user{i}@example.org,名前{i},2000-01-01,silver".encode()
        lines.append(line)
    job = await wait_job(stub, signer, await upload(stub, signer, list_id, b"\n".join(lines) + b"\n", encoding="utf-8"))
    assert (job.state, job.rows_added, job.rows_failed, job.rows_done) == ("done", 180, 20, 201)
    report = await error_csv(stub, signer, job.id)
    assert [int(r[0]) for r in report] == sorted(bad_rows)
    for row_number, reason, _raw in report:
        assert bad_rows[int(row_number)] in reason, (row_number, reason)
    found = subscribers(database_url)
    assert len(found) == 180
    assert found["user199@example.org"] == ("名前199", {"birthday": "2000-01-01", "plan": "silver"}, "active")


async def test_import_modes_and_duplicates(lists_service, stub, signer, database_url):
    # add-only leaves existing subscribers as they were, update-only touches only existing ones, and
    # add-and-update does both; a duplicate inside the file merges into one subscriber (later values win).
    list_id = await new_list(stub, signer)
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=list_id, subscribers=[lists_pb2.SubscriberInput(email="old@example.org", name="Old")]
        ),
        metadata=as_user(signer),
    )
    body = b"email,name\nold@example.org,Changed\nnew@example.org,New\nnew@EXAMPLE.org,Newer\n"
    add_only = await wait_job(
        stub, signer, await upload(stub, signer, list_id, body, mode=lists_imports_pb2.IMPORT_MODE_ADD_ONLY)
    )
    assert (add_only.rows_added, add_only.rows_updated, add_only.rows_skipped) == (1, 0, 1)
    assert subscribers(database_url)["old@example.org"][0] == "Old"
    assert subscribers(database_url)["new@example.org"][0] == "Newer"

    body = b"email,name\nold@example.org,Upd\nghost@example.org,Ghost\n"
    update_only = await wait_job(
        stub, signer, await upload(stub, signer, list_id, body, mode=lists_imports_pb2.IMPORT_MODE_UPDATE_ONLY)
    )
    assert (update_only.rows_added, update_only.rows_updated, update_only.rows_skipped) == (0, 1, 1)
    assert "ghost@example.org" not in subscribers(database_url)
    assert subscribers(database_url)["old@example.org"][0] == "Upd"

    body = b"email,name\nold@example.org,Both\nthird@example.org,Third\n"
    both = await wait_job(stub, signer, await upload(stub, signer, list_id, body))
    assert (both.rows_added, both.rows_updated) == (1, 1)
    assert {e: v[0] for e, v in subscribers(database_url).items()} == {
        "old@example.org": "Both",
        "new@example.org": "Newer",
        "third@example.org": "Third",
    }


async def test_resume_after_kill_loses_and_duplicates_nothing(
    lists_service, stub, signer, database_url, nats_server, internal_key, pki
):
    # A 3000-row import committing every 50 rows is killed (its service stopped, the job task cancelled
    # mid-chunk) after some chunks are in; a new service process resumes it from the last committed
    # chunk and every address ends up once, with one history event each and one list subscription.
    await lists_service.stop()
    config = Config(
        database_url=database_url,
        nats_url=nats_server.url,
        nats_creds_file=nats_server.creds("lists"),
        internal_key=internal_key,
        grpc_tls=pki.tls("lists"),
        grpc_bind="127.0.0.1:0",
        consume_in_background=False,
        import_batch_rows=50,
    )
    first = await start(config)
    channel = pki.channel(first.grpc_port, "gateway")
    client = ListsStubs(channel)
    list_id = await new_list(client, signer)
    data = ("email,name\n" + "".join(f"r{i}@example.org,R{i}\n" for i in range(3000))).encode()
    job_id = await upload(client, signer, list_id, data, chunk=64 * 1024)
    deadline = time.monotonic() + 60
    while True:
        job = await client.GetImport(lists_imports_pb2.GetImportRequest(import_id=job_id), metadata=as_user(signer))
        if job.rows_done > 0:
            break
        assert time.monotonic() < deadline and job.state not in TERMINAL, job.state
        await asyncio.sleep(0.005)
    await channel.close()
    await first.stop()
    with psycopg.connect(database_url) as conn:
        state, rows_done = conn.execute("SELECT state, rows_done FROM lists.import_jobs").fetchone()
    assert state == "running" and 0 < rows_done < 3001, (state, rows_done)

    second = await start(config)
    try:
        channel = pki.channel(second.grpc_port, "gateway")
        job = await wait_job(ListsStubs(channel), signer, job_id)
        await channel.close()
    finally:
        await second.stop()
    assert (job.state, job.rows_added, job.rows_done, job.rows_failed) == ("done", 3000, 3001, 0)
    with psycopg.connect(database_url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM lists.subscribers),"
            " (SELECT count(DISTINCT lower(email)) FROM lists.subscribers),"
            " (SELECT count(*) FROM lists.subscriber_history),"
            " (SELECT count(DISTINCT subscriber_id) FROM lists.subscriber_history WHERE cause = 'import'),"
            " (SELECT count(*) FROM lists.list_subscriptions)"
        ).fetchone()
    assert counts == (3000, 3000, 3000, 3000, 3000)
    # The second service must not stop the fixture's already stopped one again.
    lists_service.stop = _noop


async def _noop() -> None:
    return None


async def test_rollback_restores_previous_state(lists_service, stub, signer, database_url):
    # Rolling back an add-and-update import deletes the subscribers it created (with their history
    # and subscriptions), takes away the list subscriptions it added, and restores the names and
    # fields it overwrote; subscribers it never touched stay as they were.
    await define_fields(stub, signer)
    list_id = await new_list(stub, signer)
    other = await new_list(stub, signer, "other")
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=other,
            subscribers=[
                lists_pb2.SubscriberInput(email="kept@example.org", name="Kept", attributes_json='{"pref": "京都府"}'),
                lists_pb2.SubscriberInput(email="untouched@example.org", name="U"),
            ],
        ),
        metadata=as_user(signer),
    )
    before = subscribers(database_url)
    body = "email,name,pref\nkept@example.org,Renamed,沖縄県\nfresh@example.org,Fresh,福岡県\n".encode()
    job = await wait_job(stub, signer, await upload(stub, signer, list_id, body))
    assert subscribers(database_url)["kept@example.org"][:2] == ("Renamed", {"pref": "沖縄県"})
    rolled = await stub.RollbackImport(lists_imports_pb2.GetImportRequest(import_id=job.id), metadata=as_user(signer))
    assert rolled.state == "rolled_back"
    assert subscribers(database_url) == before
    with psycopg.connect(database_url) as conn:
        subs = conn.execute("SELECT list_id, count(*) FROM lists.list_subscriptions GROUP BY list_id").fetchall()
    assert subs == [(other, 2)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RollbackImport(lists_imports_pb2.GetImportRequest(import_id=job.id), metadata=as_user(signer))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_export_list_as_shift_jis(lists_service, stub, signer):
    # Exporting a list in Shift_JIS streams a CSV Japanese Excel opens: header, one row per subscriber.
    await define_fields(stub, signer)
    list_id = await new_list(stub, signer)
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(
            list_id=list_id,
            subscribers=[
                lists_pb2.SubscriberInput(email="a@example.jp", name="山田", attributes_json='{"points": "12"}')
            ],
        ),
        metadata=as_user(signer),
    )
    data = b"".join(
        [
            c.data
            async for c in stub.ExportSubscribers(
                lists_imports_pb2.ExportSubscribersRequest(list_id=list_id, encoding="shift_jis"),
                metadata=as_user(signer),
            )
        ]
    )
    rows = list(csv.reader(io.StringIO(data.decode("cp932"))))
    assert rows[0] == ["email", "name", "status", "birthday", "plan", "points", "pref"]
    assert rows[1] == ["a@example.jp", "山田", "active", "", "", "12", ""]


async def test_list_counts_follow_every_change(lists_service, stub, js, signer, internal_key, database_url):
    # The list overview's head counts are kept by the transactions that change membership or status:
    # after adding, importing (into two lists), unsubscribing from one list and from all, a hard
    # bounce that error-stops, a complaint, an erasure and an import rollback, ListLists gives exactly
    # what counting the subscriptions would, and the counts survive being folded together. An imported
    # subscriber's history opens with the job's import event.
    news = await new_list(stub, signer)
    vip = await new_list(stub, signer, "vip")
    md = as_user(signer)

    async def check(expected: dict[int, tuple[int, int]]) -> None:
        listed = await stub.ListLists(lists_pb2.ListListsRequest(), metadata=md)
        got = {m.id: (m.active_count, m.subscriber_count) for m in listed.lists}
        with psycopg.connect(database_url) as conn:
            truth = conn.execute(
                "SELECT l.id, count(s.id) FILTER (WHERE s.status = 'active'), count(s.id) FROM lists.lists l"
                " LEFT JOIN lists.list_subscriptions ls ON ls.list_id = l.id"
                " LEFT JOIN lists.subscribers s ON s.id = ls.subscriber_id GROUP BY l.id"
            ).fetchall()
        assert got == {r[0]: (r[1], r[2]) for r in truth} == expected
        one = await stub.GetList(lists_pb2.GetListRequest(list_id=news), metadata=md)
        assert (one.active_count, one.subscriber_count) == expected[news]

    await check({news: (0, 0), vip: (0, 0)})
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=news, subscribers=base.rows("a@example.org", "b@example.org")),
        metadata=md,
    )
    await check({news: (2, 2), vip: (0, 0)})
    body = b"email,name\na@example.org,A\nc@example.org,C\nd@example.org,D\ne@example.org,E\n"
    first = await wait_job(stub, signer, await upload(stub, signer, news, body))
    second = await wait_job(stub, signer, await upload(stub, signer, vip, b"email\nb@example.org\nf@example.org\n"))
    assert (first.state, first.rows_added, second.state, second.rows_added) == ("done", 3, "done", 1)
    await check({news: (5, 5), vip: (2, 2)})

    ids = {s.email: s.id for s in await base.all_subscribers(stub, signer, news)}
    ids.update({s.email: s.id for s in await base.all_subscribers(stub, signer, vip)})
    gateway = [(IDENTITY_HEADER, signer.sign(Principal(organization_id=ORG, service="gateway"), "lists"))]
    token = unsubscribe_token(internal_key, RecipientRef(ORG, 1, ids["b@example.org"]))
    await stub.Unsubscribe(
        lists_signup_pb2.UnsubscribeRequest(token=token, list_ids=[vip], source="page"), metadata=gateway
    )
    await check({news: (5, 5), vip: (1, 1)})
    token = unsubscribe_token(internal_key, RecipientRef(ORG, 1, ids["a@example.org"]))
    await stub.Unsubscribe(lists_signup_pb2.UnsubscribeRequest(token=token, source="one-click"), metadata=gateway)
    await check({news: (4, 4), vip: (1, 1)})

    # A status change without leaving the list: the member stays counted, no longer as active.
    for n in range(3):
        await bus.publish(js, bus.SUBJECT_BOUNCE_RECORDED, base.bounce(f"h{n}", ids["c@example.org"]))
    await bus.publish(
        js, bus.SUBJECT_BOUNCE_RECORDED, base.bounce("x", ids["d@example.org"], events_pb2.BOUNCE_KIND_COMPLAINT)
    )
    await base.consume(lists_service, 4)
    await check({news: (2, 4), vip: (1, 1)})
    await stub.UpdateSubscriber(
        lists_pb2.UpdateSubscriberRequest(
            subscriber_id=ids["c@example.org"], status=lists_pb2.SUBSCRIBER_STATUS_ACTIVE
        ),
        metadata=as_user(signer, scopes=ADMIN),
    )
    await check({news: (3, 4), vip: (1, 1)})
    # The import is recorded once per job; the subscriber's history still shows it first, with its time.
    history = await stub.ListSubscriberEvents(
        lists_pb2.ListSubscriberEventsRequest(subscriber_id=ids["c@example.org"]), metadata=md
    )
    assert [(e.old_status, e.new_status, e.cause, e.detail) for e in history.events] == [
        ("", "active", "import", f"import {first.id}"),
        ("active", "error_stopped", "hard_bounce", "5.1.1 550 mailbox unknown"),
        ("error_stopped", "active", "manual", ""),
    ]
    assert history.events[0].occurred_at.seconds > 0

    await stub.EraseSubscriber(
        lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=ids["f@example.org"]),
        metadata=as_user(signer, scopes=ADMIN),
    )
    await check({news: (3, 4), vip: (0, 0)})
    await stub.RollbackImport(lists_imports_pb2.GetImportRequest(import_id=first.id), metadata=md)
    # c, d and e were created by the rolled-back job; a was unsubscribed and only the job had put it on news.
    await check({news: (1, 1), vip: (0, 0)})

    # Many small changes spread a list's counts over many rows; reading the counts folds them together.
    for n in range(70):
        await stub.AddSubscribers(
            lists_pb2.AddSubscribersRequest(list_id=vip, subscribers=base.rows(f"m{n}@example.org")), metadata=md
        )
    await check({news: (1, 1), vip: (70, 70)})
    with psycopg.connect(database_url) as conn:
        parts = conn.execute("SELECT count(*) FROM lists.list_counts WHERE list_id = %s", (vip,)).fetchone()
    assert parts[0] <= FOLD_PARTS
    await check({news: (1, 1), vip: (70, 70)})


async def test_worker_process_parses_big_files_in_order(lists_service, stub, signer, database_url):
    # A file big enough to be parsed in a worker process (the threshold lowered here), read in 100-row
    # chunks parsed ahead of the ones being written: bad rows are reported with their row numbers, an
    # erased subscriber's address is refused by its keyed hash, an address repeated in a later chunk
    # ends with the later values, and every other row is in, on the list, once.
    lists_service.imports.process_min_bytes = 0
    lists_service.imports.batch_rows = 100
    await define_fields(stub, signer)
    list_id = await new_list(stub, signer)
    await stub.AddSubscribers(
        lists_pb2.AddSubscribersRequest(list_id=list_id, subscribers=base.rows("gone@example.org")),
        metadata=as_user(signer),
    )
    gone = (await base.all_subscribers(stub, signer, list_id))[0].id
    await stub.EraseSubscriber(
        lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=gone), metadata=as_user(signer, scopes=ADMIN)
    )
    lines = ["email,name,points"]
    for i in range(1000):
        lines.append(f"w{i}@example.org,W{i},{i}")
    lines[10] = "w9@example.org,First,1"  # row 11; row 952 (in place of w950) repeats the address
    lines[951] = "w9@example.org,Second,2"
    lines[500] = "not-an-address,X,1"
    lines[700] = "w699x@example.org,Y,many"
    lines[800] = "GONE@example.org,Z,1"
    job = await wait_job(
        stub, signer, await upload(stub, signer, list_id, ("\n".join(lines) + "\n").encode(), chunk=4096)
    )
    assert (job.state, job.rows_done, job.rows_failed) == ("done", 1001, 3)
    report = {int(r[0]): r[1] for r in await error_csv(stub, signer, job.id)}
    assert sorted(report) == [501, 701, 801]
    assert "not a number" in report[701] and "suppression list (erased)" in report[801]
    found = subscribers(database_url)
    assert found["w9@example.org"][:2] == ("Second", {"points": 2})
    assert found["w999@example.org"][:2] == ("W999", {"points": 999})
    # 1000 rows less three bad ones and w950, whose row repeats w9.
    assert len(found) == 996 and "w950@example.org" not in found and "gone@example.org" not in found
    with psycopg.connect(database_url) as conn:
        members = conn.execute("SELECT count(*) FROM lists.list_subscriptions WHERE list_id = %s", (list_id,))
        assert members.fetchone() == (996,)
    assert (job.rows_added, job.rows_updated) == (996, 1)
